"""POST /v1/chat over real HTTP against `threadline serve` in its own process, on PostgreSQL
and SQLite, beside GET /v1/health of the same server measured in the same run.

    python -m bench.http [--seconds 10] [--concurrency 32] [--store postgres|sqlite|both]
                         [--shared-client] [--json]

Closed loop: N clients each send the next request as soon as the last one answered (requests/s,
p50, p99). Open loop: chat requests on a fixed timetable of 300 per second, latency measured
from the scheduled send time so a slow server cannot hide its backlog (coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore runs `import sniffio` on every request; when it is missing (anyio >= 4.12 no
    # longer needs it) each failed import walks sys.path, and the client, not the server,
    # becomes the bottleneck. A None entry makes that import fail at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import asyncpg
import httpx

from bench.pipeline import TEXTS, percentile

ADMIN_URL = os.environ.get("THREADLINE_BENCH_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
THREADLINE = str(Path(sys.executable).parent / "threadline")
CLIENT_KEY = "tlc_bench_client_key_0123456789"
ADMIN_KEY = "tla_bench_admin_key_0123456789"
USERS = [f"bench-user-{i}@bench.test" for i in range(200)]
OPEN_RATE = 300  # requests/s for the open-loop latency target
WARMUP_SECONDS = 2.0
_HZ = os.sysconf("SC_CLK_TCK")

Send = Callable[[int], Awaitable[int]]  # request number -> HTTP status (0 on a client error)
Clients = asyncio.Queue[httpx.AsyncClient]  # idle connections


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A throwaway database, dropped even when the run fails."""
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def server(data_dir: Path, database_url: str | None) -> AsyncIterator[tuple[str, int]]:
    """`threadline serve --port 0` as its own OS process, so the server has an event loop (and a
    core) of its own; yields the base URL and PID, stops it with SIGTERM like an operator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(THREADLINE_DATA_DIR=str(data_dir), THREADLINE_CLIENT_KEY=CLIENT_KEY,
               THREADLINE_ADMIN_KEY=ADMIN_KEY, THREADLINE_LOG_LEVEL="error",
               THREADLINE_LOG_FORMAT="json")
    if database_url:
        env["THREADLINE_DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        THREADLINE, "serve", "--host", "127.0.0.1", "--port", "0", cwd=data_dir, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen, drain = "", None
    try:
        async with asyncio.timeout(60):
            while "Press Ctrl+C" not in seen and (line := await proc.stderr.readline()):
                seen += line.decode()
        match = re.search(r"is up on (http://127\.0\.0\.1:\d+)", seen)
        if not match:
            raise RuntimeError(f"threadline serve did not start:\n{seen}")
        # Keep reading stderr, or a chatty server would block on a full pipe mid-run.
        drain = asyncio.create_task(proc.stderr.read())
        yield match.group(1), proc.pid
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.returncode and drain:
            _log(f"threadline serve exited with {proc.returncode}: {(await drain)[-2000:]!r}")


@contextlib.asynccontextmanager
async def http_clients(base: str, count: int, shared: bool) -> AsyncIterator[Clients]:
    """`count` connections, lent out one request at a time. By default each is its own
    httpx.AsyncClient with one connection: one shared client with `count` connections (what
    --shared-client measures) makes the same traffic, but httpcore 1.0's pool scans every
    connection several times per request (O(N^2), encode/httpcore#1035), so at 32 connections
    the client, not the server, saturates a core at about 200 requests/s."""
    each = count if shared else 1
    limits = httpx.Limits(max_connections=each, max_keepalive_connections=each)
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=10)
               for _ in range(1 if shared else count)]
    idle: Clients = asyncio.Queue()
    for i in range(count):
        idle.put_nowait(clients[i % len(clients)])
    try:
        yield idle
    finally:
        for client in clients:
            await client.aclose()


def senders(idle: Clients) -> tuple[Send, Send]:
    async def chat(i: int) -> int:
        # The same user gets a different text each time it comes round (200 users, 8 texts).
        headers = {"X-Muxi-Client-Key": CLIENT_KEY, "X-Muxi-User-ID": USERS[i % len(USERS)]}
        text = TEXTS[(i // len(USERS) + i) % len(TEXTS)]
        return await _request(idle, "POST", "/v1/chat", json={"message": text}, headers=headers)

    async def health(i: int) -> int:
        return await _request(idle, "GET", "/v1/health")

    return chat, health


async def _request(idle: Clients, method: str, url: str, **kwargs: Any) -> int:
    client = await idle.get()  # waiting here for a free connection counts as latency
    try:
        return (await client.request(method, url, **kwargs)).status_code
    except httpx.HTTPError:
        return 0  # refused, reset or timed out: an error like a 5xx
    finally:
        idle.put_nowait(client)


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    return {"rps": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "errors": errors}


async def closed_loop(send: Send, concurrency: int, seconds: float) -> dict[str, float]:
    """Each client sends its next request when the previous one answered, until the deadline."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await send(next(counter))
            latencies.append((time.perf_counter() - started) * 1000)
            errors += not 200 <= status < 300

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return _summary(latencies, errors, time.perf_counter() - started)


async def open_loop(send: Send, rate: int, count: int) -> dict[str, float]:
    """Send request i at start + i/rate whatever the answers do; latency counts from that
    scheduled instant, so time spent queued behind a slow server (or a late client) shows."""
    latencies = [0.0] * count
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        status = await send(i)
        latencies[i] = (time.perf_counter() - due) * 1000
        errors += not 200 <= status < 300

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    result = _summary(latencies, errors, time.perf_counter() - start)
    # A server that keeps up answers the last sends like the first; one that cannot has a
    # queue that grows all run long (here: by more than the whole 50 ms budget).
    tenth = max(1, count // 10)
    growth = statistics.median(latencies[-tenth:]) - statistics.median(latencies[:tenth])
    result["kept_up"] = growth <= 50
    return result


def _cpu_now(pid: int) -> dict[str, float]:
    """CPU seconds so far: the server process, this client, the whole machine (the database's
    processes included), and steal, time a hypervisor took from this machine's cores."""
    try:
        server = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        machine = [int(n) for n in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except OSError:  # not Linux: the CPU columns read 0
        server, machine = ["0"] * 13, [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = machine
    return {"server_cpu": (int(server[11]) + int(server[12])) / _HZ,
            "client_cpu": time.process_time(),
            "machine_cpu": (user + nice + system + irq + softirq) / _HZ,
            "stolen_cpu": steal / _HZ}


async def with_cpu(pid: int, phase: Awaitable[dict[str, float]]) -> dict[str, float]:
    """Run one phase and add the cores each side used. Server and client each run one event
    loop: a side near 1.00 is the bottleneck; a machine near its core count leaves neither
    room (client, server and database share it); steal makes a run slower for no reason of
    its own."""
    before, started = _cpu_now(pid), time.perf_counter()
    result = await phase
    wall, after = time.perf_counter() - started, _cpu_now(pid)
    result.update({key: (after[key] - before[key]) / wall for key in after})
    return result


async def measure(label: str, base: str, pid: int,
                  args: argparse.Namespace) -> dict[str, dict[str, float]]:
    async with http_clients(base, args.concurrency, args.shared_client) as idle:
        chat, health = senders(idle)
        # First contact creates each user; keep that out of the timed part.
        await asyncio.gather(*(chat(i) for i in range(len(USERS))))
        await closed_loop(chat, args.concurrency, WARMUP_SECONDS)
        await closed_loop(health, args.concurrency, WARMUP_SECONDS / 2)
        _log(f"{label}: closed loop, {args.concurrency} clients, {args.seconds}s each")
        results = {
            "chat": await with_cpu(pid, closed_loop(chat, args.concurrency, args.seconds)),
            "trivial": await with_cpu(pid, closed_loop(health, args.concurrency, args.seconds))}
        _log(f"{label}: open loop, {OPEN_RATE} chat requests/s for {args.seconds}s")
        results["open"] = await with_cpu(pid, open_loop(chat, OPEN_RATE,
                                                        int(OPEN_RATE * args.seconds)))
    return results


async def run_store(store: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="threadline-bench-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(postgres_database()) \
                if store == "postgres" else None
            base, pid = await stack.enter_async_context(server(Path(tmp), url))
            _log(f"{store}: threadline serve pid {pid} on {base}")
            return await measure(store, base, pid, args)


def table(results: dict[str, dict[str, dict[str, float]]]) -> None:
    print(f"{'store':<10}{'chat rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'trivial rps':>13}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'chat/triv':>11}{'p99 ms @300/s':>15}{'errors':>8}")
    for store, r in results.items():
        c, t, o = r["chat"], r["trivial"], r["open"]
        late = "" if o["kept_up"] else " (fell behind)"
        print(f"{store:<10}{c['rps']:>10.0f}{c['p50_ms']:>9.2f}{c['p99_ms']:>9.2f}"
              f"{t['rps']:>13.0f}{t['p50_ms']:>9.2f}{t['p99_ms']:>9.2f}"
              f"{c['rps'] / t['rps']:>11.3f}{o['p99_ms']:>15.2f}"
              f"{c['errors'] + t['errors'] + o['errors']:>8.0f}{late}")
    print("targets: >= 1,000 chat requests/s; p99 <= 50 ms at 300 requests/s")
    print(f"CPU in cores: server / client / whole machine ({os.cpu_count()} cores), "
          "and taken by the hypervisor (steal)")
    for store, r in results.items():
        print(f"  {store:<10}" + "   ".join(
            f"{phase} {r[phase]['server_cpu']:.2f} / {r[phase]['client_cpu']:.2f} / "
            f"{r[phase]['machine_cpu']:.2f} ({r[phase]['stolen_cpu']:.2f})"
            for phase in ("chat", "trivial", "open")))
    if any(phase["stolen_cpu"] > 0.1 for r in results.values() for phase in r.values()):
        print("warning: the hypervisor took CPU during this run; its figures are low and noisy")


def as_json(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    out: dict[str, object] = {}
    for store, r in results.items():
        prefix = "" if store == "postgres" else f"{store}_"  # PostgreSQL is the primary
        for phase in ("chat", "trivial"):
            for key in ("rps", "p50_ms", "p99_ms", "server_cpu", "client_cpu", "machine_cpu",
                        "stolen_cpu"):
                out[f"{prefix}{phase}_{key}"] = round(r[phase][key], 3)
        out[f"{prefix}chat_p99_ms_at_300rps"] = round(r["open"]["p99_ms"], 3)
        out[f"{prefix}kept_up_at_300rps"] = bool(r["open"]["kept_up"])
        out[f"{prefix}errors"] = int(sum(phase["errors"] for phase in r.values()))
    out.update(seconds=args.seconds, concurrency=args.concurrency, users=len(USERS),
               shared_client=args.shared_client)
    return json.dumps(out)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--store", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--shared-client", action="store_true",
                        help="one httpx client for all connections (its pool costs the client)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    stores = ["postgres", "sqlite"] if args.store == "both" else [args.store]
    results = {store: await run_store(store, args) for store in stores}
    table(results)
    if args.json:
        print(as_json(results, args))


if __name__ == "__main__":
    asyncio.run(main())
