"""`python -m sessionary`, and the `sessionary` console script: the command, or, where an
extra it needs is not installed (a core-only `pip install sessionary`, or a `redis://` store
without the `redis` extra), the one line that says what to install, on stderr, exit status 2,
instead of a traceback."""

from __future__ import annotations

import sys

from sessionary.extras import MissingExtra


def main() -> None:
    try:
        from sessionary.cli import run

        run()
    except MissingExtra as missing:
        print(missing, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
