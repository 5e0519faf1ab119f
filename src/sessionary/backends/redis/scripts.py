"""The Lua scripts of the Redis backend, loaded once and called by SHA.

Each `*.lua` file beside this module is one script, with `common.lua` prepended (and, for
scripts that share more, helper files named at load: the analytics scripts share
`analytics.lua`, the work-queue scripts `queue.lua`). Calls go
out as EVALSHA; a NOSCRIPT answer (after SCRIPT FLUSH, a restart or a failover to a server
that never saw the script) loads the script and runs that call again: NOSCRIPT means the
script did not run, so running it again is safe (no other failure is ever retried). Nothing is
ever sent as EVAL with the full source on the hot path.

Loading is single-flight, per script and per server (per node on a cluster): the callers that
find a script missing at once (a cold start, a burst after a flush) wait for one SCRIPT LOAD
instead of each sending its own. On a single server the load goes through the auto-pipeline's
connections like any call; on a cluster, to the node that owns the call's first key. A caller
runs its script at most `_ATTEMPTS` times: a server flushed again and again answers NOSCRIPT
in the end (`StoreUnavailable`), never an endless loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from sessionary.backends.redis.batching import Batcher, Client, Replication

Arg = str | bytes | int
__all__ = ["Arg", "Batcher", "Client", "Replication", "Script", "Scripts"]
# how many times one call may find its script missing (each time it did not run)
_ATTEMPTS = 3
_Where = tuple[str, str | None]  # a script's SHA, and the cluster node's name (or None)


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
    """The backend's scripts, and how to run them alone or many in one round trip (those of
    `RedisAnalytics` too: one `Scripts` per backend, so one load in flight per script)."""

    def __init__(self) -> None:
        # per (script, node; None on a single server): its load in flight, and when (counted
        # in loads ended, `_ends`) its last load ended: a NOSCRIPT to a call sent before
        # then is stale
        self._loads: dict[_Where, asyncio.Task[None]] = {}
        self._ends = 0
        self._ended_at: dict[_Where, int] = {}
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
        self.queue_enqueue = Script.load("queue_enqueue", ("queue",))
        self.queue_claim = Script.load("queue_claim", ("queue",))
        self.queue_renew = Script.load("queue_renew", ("queue",))
        self.queue_ack = Script.load("queue_ack", ("queue",))
        self.queue_depth = Script.load("queue_depth", ("queue",))

    async def run(
        self, calls: Batcher, script: Script, keys: Sequence[str], args: Sequence[Arg]
    ) -> Any:
        attempt = 1
        while True:
            sent = self._ends  # the loads ended before this call went out
            try:
                return await calls.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                if attempt == _ATTEMPTS:
                    raise
            attempt += 1
            # only now (a miss is rare) which server: the hot path pays no node lookup
            client = calls.client
            node = client.get_node_from_key(keys[0]) if isinstance(client, RedisCluster) else None
            where = (script.sha, None if node is None else node.name)
            if self._ended_at.get(where, 0) <= sent:  # else a load ended since: just run
                await self._load(calls, script, where, node)

    async def _load(
        self, calls: Batcher, script: Script, where: _Where, node: ClusterNode | None
    ) -> None:
        """Load `script` on the server or node, or wait for the load in flight there."""
        loading = self._loads.get(where)
        if loading is None:
            loading = asyncio.get_running_loop().create_task(_send_load(calls, script, node))
            self._loads[where] = loading
            loading.add_done_callback(lambda _: self._ended(where))
        # shielded: a caller that gives up does not cancel the load the others wait for
        await asyncio.shield(loading)

    def _ended(self, where: _Where) -> None:
        del self._loads[where]
        self._ends += 1
        self._ended_at[where] = self._ends

    async def run_many(
        self, batcher: Batcher, calls: Sequence[tuple[Script, Sequence[str], Sequence[Arg]]]
    ) -> list[Any]:
        """Run several scripts at once: in one pipeline on a single server (no MULTI: each
        script is atomic alone); on a cluster, whose pipelines refuse scripts, the nodes side
        by side, one script at a time on each (see `_per_node`)."""
        if not calls:
            return []
        client = batcher.client
        if len(calls) == 1:
            return [await self.run(batcher, *calls[0])]
        if isinstance(client, RedisCluster):
            return await self._per_node(batcher, client, calls)
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
                results[index] = await self.run(batcher, script, keys, args)
            elif isinstance(result, Exception):
                raise result
        return results

    async def _per_node(
        self,
        batcher: Batcher,
        client: RedisCluster,
        calls: Sequence[tuple[Script, Sequence[str], Sequence[Arg]]],
    ) -> list[Any]:
        """The calls, the nodes side by side, one at a time on each: a caller holds at most
        one connection of a node's pool (which has `max_connections`, like the backend's
        slots), so callers within the slots never find a pool empty (MaxConnectionsError)."""
        by_node: dict[str, list[int]] = {}
        for index, (_, keys, _) in enumerate(calls):
            node = client.get_node_from_key(keys[0])
            by_node.setdefault("" if node is None else node.name, []).append(index)
        results: list[Any] = [None] * len(calls)

        async def run_on_node(indexes: list[int]) -> None:
            for index in indexes:
                results[index] = await self.run(batcher, *calls[index])

        await asyncio.gather(*(run_on_node(indexes) for indexes in by_node.values()))
        return results


async def _send_load(calls: Batcher, script: Script, node: ClusterNode | None) -> None:
    if node is None:
        await calls.call("SCRIPT", "LOAD", script.source)
    else:
        await calls.client.execute_command("SCRIPT", "LOAD", script.source, target_nodes=node)
