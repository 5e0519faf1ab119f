"""`python -m sessionary` is the `sessionary` command."""

from sessionary.cli import main

main()
