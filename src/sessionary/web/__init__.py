"""The web layer: the service (`create_app`), and the ASGI session middleware."""

from sessionary.web.middleware import SessionHandle, SessionMiddleware, current_session

__all__ = ["SessionHandle", "SessionMiddleware", "current_session"]
