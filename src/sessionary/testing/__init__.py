"""The conformance suite: the tests every backend must pass, the built-in ones and yours.

Use it from a test module (needs the `testing` extra: pytest, pytest-asyncio, hypothesis)::

    from sessionary.testing import StoreConformance, MultiProcessConformance

    class TestMyBackend(StoreConformance, MultiProcessConformance):
        @pytest.fixture
        def store_url(self):            # a URL `sessionary.connect` opens, isolated per test
            return "mybackend://..."

        async def footprint(self, store):  # what the backend holds, to prove nothing leaks
            return ...

`MultiProcessConformance` is for backends shared between processes (not `memory://`).
`SyncStoreConformance` runs the same suite through the blocking API (`sessionary.sync`).
"""

from sessionary.testing._processes import MultiProcessConformance
from sessionary.testing._sync import SyncBackedStore, SyncStoreConformance
from sessionary.testing.conformance import StoreConformance

__all__ = ["MultiProcessConformance", "StoreConformance", "SyncBackedStore", "SyncStoreConformance"]
