"""The Lua scripts of the Redis backend, loaded once and called by SHA.

Each `*.lua` file beside this module is one script, with `common.lua` prepended (and, for
scripts that share more, helper files named at load: the analytics scripts share
`analytics.lua`). Calls go
out as EVALSHA; a NOSCRIPT answer (after SCRIPT FLUSH, a restart or a failover to a server
that never saw the script) loads the script and retries that one call. Nothing is ever sent
as EVAL with the full source on the hot path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from sessionary.backends.redis.batching import Batcher, Client, Replication

Arg = str | bytes | int
__all__ = ["Arg", "Batcher", "Client", "Replication", "Script", "Scripts"]


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, name: str, helpers: Sequence[str] = ()) -> Script:
        """`common.lua`, then each helper file, then `<name>.lua`, as one script."""
        here = files("sessionary.backends.redis")
        source = b"\n".join(
            here.joinpath(f"{part}.lua").read_bytes() for part in ("common", *helpers, name)
        )
        return cls(name, source, hashlib.sha1(source, usedforsecurity=False).hexdigest())


class Scripts:
    """The backend's scripts, and how to run them alone or many in one round trip."""

    def __init__(self) -> None:
        self.create = Script.load("create")
        self.touch = Script.load("touch")
        self.update = Script.load("update")
        self.consume = Script.load("consume")
        self.rotate = Script.load("rotate")
        self.delete = Script.load("delete")
        self.revoke = Script.load("revoke")
        self.claim = Script.load("claim")
        self.counters = Script.load("counters")
        self.append = Script.load("append")
        self.read_log = Script.load("read_log")
        self.set_counters = Script.load("set_counters")

    @staticmethod
    async def run(calls: Batcher, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await calls.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await calls.client.script_load(script.source)
            return await calls.call("EVALSHA", script.sha, len(keys), *keys, *args)

    @classmethod
    async def run_many(
        cls, batcher: Batcher, calls: Sequence[tuple[Script, Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        """Run several scripts at once: in one pipeline on a single server (no MULTI: each
        script is atomic alone), side by side on a cluster, whose pipelines refuse scripts."""
        if not calls:
            return []
        client = batcher.client
        if len(calls) == 1 or isinstance(client, RedisCluster):
            return list(
                await asyncio.gather(*(cls.run(batcher, s, keys, args) for s, keys, args in calls))
            )
        replication = batcher.replication
        async with client.pipeline(transaction=False) as pipe:
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if replication is not None:  # see batching.py: one WAIT after the writes
                pipe.execute_command("WAIT", replication.replicas, replication.timeout_ms)
            results = await pipe.execute(raise_on_error=False)
        if replication is not None:
            acknowledged = results.pop()
            if isinstance(acknowledged, Exception):
                raise acknowledged
            commands = [("EVALSHA", script.sha) for script, _, _ in calls]
            replication.check(commands, results, int(acknowledged))
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError):
                script, keys, args = calls[index]
                results[index] = await cls.run(batcher, script, keys, args)
            elif isinstance(result, Exception):
                raise result
        return results
