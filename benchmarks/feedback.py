"""Feedback ingest throughput and latency with the AOF fsynced on every write; prints one JSON object.

What runs: ``editloop serve`` in its own process (no model needed for /feedback) with its embedded
redis-server (unix socket, ``appendfsync always``), and a load generator in this process speaking
HTTP/1.1 keep-alive over plain asyncio streams (an HTTP library would cost the generator more CPU
than the server on a 2-core machine):

- ``empty_http``: ``POST /feedback`` with ``[]``: what HTTP and the framework cost, nothing stored;
- ``single_http``: ``POST /feedback`` with one event per request, ``--connections`` at a time;
- ``batch_http``: ``POST /feedback`` with ``--batch`` events per request, 4 at a time;
- ``store_batch``: ``FeedbackStore.append`` in-process, same batches (no HTTP), for reference.

Every request is answered 202 only after its events are in Redis with the AOF fsynced; requests
in flight together share one write and one fsync (group commit). The figures include every
duplicate check (one event id key per event).

Run: ``.venv/bin/python benchmarks/feedback.py [--seconds 10] [--connections 64] [--batch 1000]``.
Targets on 2 cores: single ≥ 2,000 events/s, batched ≥ 50,000 events/s.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from editloop.feedback.store import FeedbackStore
from editloop.server.background import free_port

EDITLOOP = Path(sys.executable).with_name("editloop")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_child(pid: int) -> int:
    """The embedded redis-server the server process started."""
    tasks = Path(f"/proc/{pid}/task")
    kids = [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]
    return next(k for k in kids if Path(f"/proc/{k}/comm").read_text().strip() == "redis-server")


class CpuMeter:
    """CPU seconds used by the server, its redis-server and this load generator during a phase."""

    def __init__(self, server: int) -> None:
        self.pids = {"server": server, "redis": redis_child(server)}

    def __enter__(self) -> "CpuMeter":
        self.start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.client_start, self.wall_start = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall_start
        used = {name: cpu_seconds(pid) - self.start[name] for name, pid in self.pids.items()}
        used["load_generator"] = time.process_time() - self.client_start
        self.result = {f"{name}_cores": round(seconds / wall, 2) for name, seconds in used.items()}


def measured(meter: CpuMeter, phase: dict) -> dict:
    """The phase's figures plus how many cores each process kept busy, and events per server CPU second."""
    cores = meter.result
    per_cpu = phase["events_per_s"] / cores["server_cores"] if cores["server_cores"] else None
    return phase | cores | {"events_per_server_cpu_s": round(per_cpu) if per_cpu else None}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def event(run: str, i: int) -> dict:
    return {"type": "shown", "event_id": f"{run}-{i}", "completion_id": f"cmpl-{i // 3}", "user": "bench"}


class Connection:
    """One keep-alive HTTP/1.1 connection: POST JSON, read the status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes) -> int:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        self.writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def load(port: int, run: str, per_request: int, connections: int, seconds: float) -> dict:
    """Each connection posts requests back to back for ``seconds``; returns events/s and latency."""
    latencies: list[float] = []
    failures = 0
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failures
        connection = await Connection.open(port)
        try:
            while time.perf_counter() < deadline:
                events = [event(run, next(counter)) for _ in range(per_request)]
                body = json.dumps(events[0] if per_request == 1 else {"events": events}).encode()
                if per_request == 0:
                    body = b"[]"  # the route with nothing to store: HTTP and framework cost alone
                started = time.perf_counter()
                status = await connection.post("/feedback", body)
                latencies.append(time.perf_counter() - started)
                failures += status != 202
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed),
        "events": len(latencies) * per_request,
        "failed_requests": failures,
        "events_per_s": round(len(latencies) * per_request / elapsed),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
        },
    }


def store_batches(url: str, batch: int, seconds: float) -> dict:
    from editloop.feedback.events import parse_event

    store = FeedbackStore.from_url(url)
    latencies, total, i = [], 0, 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        events = [parse_event(event("store", i + k)) for k in range(batch)]
        i += batch
        t = time.perf_counter()
        store.append(events)
        latencies.append(time.perf_counter() - t)
        total += batch
    elapsed = time.perf_counter() - started
    store.close()
    return {
        "events": total,
        "events_per_s": round(total / elapsed),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
        },
    }


def serve(home: Path, port: int) -> subprocess.Popen:
    # Extra import paths for the server only (e.g. a dir with httptools and uvloop, which uvicorn
    # picks up by itself), to compare HTTP stacks without changing the project's environment.
    env = {
        **os.environ,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_LOG_LEVEL": "warning",
        "EDITLOOP_TRAINER": "false",
    }
    if os.environ.get("BENCH_SERVER_PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["BENCH_SERVER_PYTHONPATH"]
    env.pop("EDITLOOP_REDIS_URL", None)
    process = subprocess.Popen(
        [str(EDITLOOP), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("editloop serve did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="editloop-bench-") as tmp:
        home, port = Path(tmp), free_port()
        process = serve(home, port)
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health/detail", timeout=10).json()["feedback"]
            asyncio.run(load(port, "warmup", 1, 8, 1.0))
            with CpuMeter(process.pid) as meter:
                floor = asyncio.run(load(port, "floor", 0, args.connections, args.seconds))
            floor = measured(meter, floor)
            with CpuMeter(process.pid) as meter:
                single = asyncio.run(load(port, "single", 1, args.connections, args.seconds))
            single = measured(meter, single)
            with CpuMeter(process.pid) as meter:
                batched = asyncio.run(load(port, "batch", args.batch, 4, args.seconds))
            batched = measured(meter, batched)
            direct = store_batches(health["redis"]["url"], args.batch, args.seconds)
            stats = FeedbackStore.from_url(health["redis"]["url"]).stats()
        finally:
            process.terminate()
            process.wait(30)
    print(
        json.dumps(
            {
                "empty_http": floor,
                "single_http": single,
                "batch_http": batched | {"batch": args.batch, "connections": 4},
                "store_batch": direct | {"batch": args.batch},
                "stored_total": sum(stats["counts"].values()),
                "redis": {
                    "appendfsync": "always",
                    "transport": "unix socket",
                    "durability": health["durability"],
                },
                "connections_single": args.connections,
                "cpus": os.cpu_count(),
                "load_average_1m_at_end": os.getloadavg()[0],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
