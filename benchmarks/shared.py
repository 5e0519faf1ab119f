"""What several benchmarks share (a helper module, not a benchmark): the options and the
wrk check of those that load a server with wrk, and the removal of a run's Redis keys."""

from __future__ import annotations

import argparse
import shutil
import sys

from redis.asyncio import Redis


def wrk_parser(description: str, duration: int = 8) -> argparse.ArgumentParser:
    """A parser with the options every wrk benchmark takes; add its own, then call
    `wrk_arguments`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=duration, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds; each rate is the median (the VM is noisy)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CI size, seconds: 1 s per measurement, one round"
    )
    return parser


def wrk_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The parsed options (`--smoke`: 1 s, one round); exits saying so when wrk is missing."""
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds = 1, 1
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk (make bench installs it)")
    return args


async def forget_redis_keys(url: str, prefix: str) -> None:
    """Delete every key under the benchmark's `prefix` (markers that never expire among
    them), scanning: never KEYS."""
    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()
