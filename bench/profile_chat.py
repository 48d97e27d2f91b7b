"""Where a worker's CPU goes per chat request: py-spy samples of `threadline serve` (one
worker) while wrk drives POST /v1/chat (or GET /v1/health), summed by function and by module.

    python -m bench.profile_chat [--seconds 20] [--endpoint chat|trivial]
                                 [--store postgres|sqlite] [--top 25] [--raw FILE]

Needs wrk and py-spy (`pip install py-spy`; it reads the worker's memory, so root or
ptrace rights). The server is set up as bench.http sets it up (PostgreSQL + Redis, 200 users,
32 connections). Each figure is microseconds of the worker's CPU per request: its share of the
samples times the CPU the worker used (/proc) over the requests wrk counted. Inclusive: the
function and what it calls; self: the function's own frames (C code it calls included, as
py-spy runs without --native).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.http import (
    REDIS_URL,
    USERS,
    WARMUP_SECONDS,
    _cpu_now,
    chat_sender,
    http_clients,
    postgres_database,
    redis_keys_dropped,
    run_wrk,
    server,
)

RATE = 100  # samples per second


def _frame(raw: str) -> tuple[str, str]:
    """'name (path/to/file.py)' -> (name, short path)."""
    name, _, where = raw.rpartition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/python3.12/", "/python3.11/", "/python3.13/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    else:
        where = where.split("/wt-bench/", 1)[-1].split("/main/", 1)[-1]
    return name or raw, where


def _module(where: str) -> str:
    """A library by its top package; the project's modules by file."""
    top = where.split("/", 1)[0]
    if top in ("gateway", "memory", "identity", "config", "adapters"):
        return where
    return top.removesuffix(".py")


def summarize(raw: Path, cpu_per_request_us: float, top: int) -> None:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    modules: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        names = [f"{name} ({where})" for name, where in frames]
        for name in set(names):
            inclusive[name] += n
        own[names[-1]] += n
        modules[_module(frames[-1][1])] += n
    if not total:
        print("no samples: was the worker busy?")
        return
    per = cpu_per_request_us / total

    def show(title: str, counts: Counter[str]) -> None:
        print(f"\n{title}")
        for name, n in counts.most_common(top):
            print(f"  {n * per:>8.0f} us  {n / total:>6.1%}  {name}")

    print(f"{total} samples; {cpu_per_request_us:.0f} us of worker CPU per request")
    show("inclusive (the function and all it calls), per request:", inclusive)
    show("self (the innermost Python frame), per request:", own)
    show("self, by library (top package) or project file, per request:", modules)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--endpoint", choices=["chat", "trivial"], default="chat")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw (collapsed) stacks here")
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()
    wrk, spy = shutil.which("wrk"), shutil.which("py-spy") or str(
        Path(sys.executable).parent / "py-spy")
    if wrk is None or not Path(spy).exists():
        sys.exit("needs wrk (apt-get install wrk) and py-spy (pip install py-spy)")
    # run_wrk reads these, as bench.http's options.
    args.threads, args.connections, args.idempotency_keys = 1, 32, False
    with tempfile.TemporaryDirectory(prefix="threadline-profile-") as tmp:
        raw = args.raw or Path(tmp) / "stacks.txt"
        async with contextlib.AsyncExitStack() as stack:
            url = cache = None
            formation = f"bench{uuid.uuid4().hex[:8]}"
            if args.store == "postgres":
                url = await stack.enter_async_context(postgres_database())
                cache = f"{REDIS_URL}/{args.redis_db}"
                await stack.enter_async_context(redis_keys_dropped(cache, formation))
            srv = await stack.enter_async_context(server(Path(tmp), url, cache, 1, formation))
            async with http_clients(srv.base, 32) as idle:
                chat = chat_sender(idle, False)
                await asyncio.gather(*(chat(i) for i in range(len(USERS))))
            await run_wrk(wrk, srv.base, args.endpoint, WARMUP_SECONDS, args)
            load = asyncio.create_task(
                run_wrk(wrk, srv.base, args.endpoint, args.seconds + 2, args))
            await asyncio.sleep(1)  # sample the steady state, not wrk's connecting
            before, started = _cpu_now(srv.pids, srv.database), time.perf_counter()
            spying = await asyncio.create_subprocess_exec(
                spy, "record", "-p", str(srv.pids[0]), "-r", str(RATE), "-d",
                f"{args.seconds:g}", "--nolineno", "-f", "raw", "-o", str(raw),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await spying.communicate()
            after, wall = _cpu_now(srv.pids, srv.database), time.perf_counter() - started
            result = await load
            if spying.returncode:
                sys.exit(f"py-spy failed: {err.decode()[-2000:]}")
        # wrk's rate over its whole run stands in for the rate during the sampled part.
        requests = result["rps"] * wall
        cpu = after["worker_cpu"][0] - before["worker_cpu"][0]
        database = sum(t - before["database_cpu"].get(pid, 0.0)
                       for pid, t in after["database_cpu"].items())
        print(f"{args.endpoint} on {args.store}: {result['rps']:.0f} requests/s, worker "
              f"{cpu / wall:.2f} cores while sampled ({wall:.1f} s); PostgreSQL's backends "
              f"{database / requests * 1e6:.0f} us of CPU per request")
        summarize(raw, cpu / requests * 1e6, args.top)


if __name__ == "__main__":
    asyncio.run(main())
