"""Flask's own session tests, run against `sessionary.contrib.flask.SessionInterface`.

The test functions are Flask's, unchanged, taken by name from the test modules of its source
distribution (`tests.peers.suite("flask")`); the `app` fixture they build on is replaced by
one whose session interface is ours (see conftest.py), on SQLite and on Redis.

Flask's session tests that do not apply, and why:

- test_basic.py::test_missing_session: without `SECRET_KEY` Flask's cookie interface cannot
  sign, so it hands out a `NullSession` that refuses writes. Ours signs nothing and needs no
  secret key: there is always a session.
- test_basic.py::test_session_secret_key_fallbacks: rotating the signing key
  (`SECRET_KEY_FALLBACKS`) of signed cookies. Our cookie carries only a random id, unsigned.
- test_testing.py::test_session_transactions_no_null_sessions: builds its own app on Flask's
  default (cookie) interface without a secret key, to see its null session refused.
- test_reqctx.py::test_session_error_pops_context, test_session_dynamic_cookie_name, and
  test_session_interface.py::test_open_session_with_endpoint: each installs a session
  interface of its own (one that fails, a `SecureCookieSessionInterface` subclass, a stub);
  what they test is Flask's request context, not a session interface. (A subclass of ours
  with a dynamic cookie name is tested in test_flask.py.)
- test_reqctx.py::TestGreenletContextCopying: needs greenlet, which nothing here installs;
  the same thing, a copied request context seeing the session, is tested with a thread in
  test_flask.py.
"""

from __future__ import annotations

from tests.contrib.flask.conftest import flask_test_module

_basic = flask_test_module("test_basic")
_testing = flask_test_module("test_testing")
_helpers = flask_test_module("test_helpers")
_templating = flask_test_module("test_templating")
_signals = flask_test_module("test_signals")

# test_basic.py: every session test that applies, and the flashing ones
test_session_accessed = _basic.test_session_accessed
test_session_path = _basic.test_session_path
test_session_using_application_root = _basic.test_session_using_application_root
test_session_using_session_settings = _basic.test_session_using_session_settings
test_session_using_samesite_attribute = _basic.test_session_using_samesite_attribute
test_session_expiration = _basic.test_session_expiration
test_session_stored_last = _basic.test_session_stored_last
test_session_special_types = _basic.test_session_special_types
test_session_cookie_setting = _basic.test_session_cookie_setting
test_session_vary_cookie = _basic.test_session_vary_cookie
test_session_refresh_vary = _basic.test_session_refresh_vary
test_flashes = _basic.test_flashes
test_extended_flashing = _basic.test_extended_flashing

# test_testing.py: the test client's session support
test_redirect_session = _testing.test_redirect_session
test_session_transactions = _testing.test_session_transactions
test_session_transactions_keep_context = _testing.test_session_transactions_keep_context
test_session_transaction_needs_cookies = _testing.test_session_transaction_needs_cookies

# the session as other parts of Flask use it: streamed responses, templates, signals
test_standard_context = _templating.test_standard_context
test_flash_signal = _signals.test_flash_signal


class TestStreaming:
    """Flask's streaming tests that read the session (its other ones do not touch it)."""

    test_stream_keeps_session = _helpers.TestStreaming.test_stream_keeps_session
    test_async_view = _helpers.TestStreaming.test_async_view
