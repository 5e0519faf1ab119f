"""The web layer: the service (`create_app`), and the ASGI session middleware."""

from sessionary.web.middleware import (
    CurrentSession,
    SessionHandle,
    SessionMiddleware,
    current_session,
)

__all__ = ["CurrentSession", "SessionHandle", "SessionMiddleware", "current_session"]
