"""A user's sessions: list them, and log the user out everywhere.

Login records the user (`request.user.pk`) as the session's subject (see `session_store`), so
these find every live session of the user, in every process sharing the store. "Log out my
other sessions" is `request.session.revoke_others()`.
"""

from __future__ import annotations

from sessionary.contrib.django.config import namespace
from sessionary.model import Session


def sessions_of(user_id: object) -> list[Session]:
    """The user's live sessions, newest first (`user_id`: the user's primary key)."""
    return namespace().list_subject(str(user_id))


async def asessions_of(user_id: object) -> list[Session]:
    """See `sessions_of`."""
    return await namespace().arun(lambda n: n.list_subject(str(user_id)))


def revoke_user(user_id: object) -> int:
    """Log the user out everywhere: delete each of their sessions; how many were live."""
    return namespace().revoke_subject(str(user_id))


async def arevoke_user(user_id: object) -> int:
    """See `revoke_user`."""
    return await namespace().arun(lambda n: n.revoke_subject(str(user_id)))
