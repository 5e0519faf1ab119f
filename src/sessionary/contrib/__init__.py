"""Integrations with web frameworks (Django, Flask, Litestar): each one a thin adapter over
the framework-free session rules of `sessionary.session_request`, driven through
`sessionary.sync` where the framework is synchronous."""
