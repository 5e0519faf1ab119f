"""Run sessions: a conversation's runs, each with a durable, resumable event stream.

runs = Runs(store)
conversation = await runs.create_conversation(owner="alice")
run = await runs.start(conversation.id, owner="alice")           # policy: reject|enqueue|interrupt
async with runs.producer(run.id, worker="w1") as p:              # in the worker
    for chunk in answer():
        if p.cancelled:
            break
        await p.emit("chunk", {"text": chunk})
    await p.complete({"tokens": 42})
async for event in runs.events(run.id, after=last_seen_cursor):  # in a reader: resumes exactly
    ...
"""

from sessionary.extras import needs

with needs("server", "sessionary.runs"):
    from sessionary.runs.model import (
        ActiveRunExists,
        Conversation,
        ConversationNotFound,
        NotOwner,
        Run,
        RunBusy,
        RunFinished,
        RunNotFound,
    )
    from sessionary.runs.service import Producer, Runs
    from sessionary.runs.settings import RunsSettings

__all__ = [
    "ActiveRunExists",
    "Conversation",
    "ConversationNotFound",
    "NotOwner",
    "Producer",
    "Run",
    "RunBusy",
    "RunFinished",
    "RunNotFound",
    "Runs",
    "RunsSettings",
]
