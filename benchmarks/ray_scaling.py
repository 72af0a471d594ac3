"""How the Ray scale-out scales: rows/s of 1 and 2 actors on a local cluster, and the CPU each
row costs on the actors, beside one `batchpizza run` process on the same rows.

    python benchmarks/ray_scaling.py [ROWS] [--latency MS] [--per-actor C]

The mock server runs in its own process with a fixed latency (20 ms by default) and no rate
limit; every side sends at `rate=0`. Each actor gets the same concurrency (C, 16 by default), so
that with the network as the bound two actors can do twice the work of one; the one-process run
gets C too. The actors' CPU is read from /proc for every process Ray titled `MapWorker`, polled
every 0.2 s (what an actor spends after its last poll is missed: a fraction of a second), and
divided by the rows. The one-process figure is the whole `batchpizza run` process (start-up
included) from os.wait4. Ray's own cost (its start-up, the driver, the raylet and the
controller) is printed apart: `ray.init`'s wall time and the driver's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def mock(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0"]
    server = subprocess.Popen(
        [*cmd, "--latency", str(latency_ms)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().split()[-1]


def requests_seen(url: str) -> int:
    with urllib.request.urlopen(url + "/__stats") as reply:
        stats: dict[str, Any] = json.load(reply)
    return int(stats["requests"])


class ActorCPU:
    """The CPU seconds of every process titled like a Ray Data map worker, polled."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._before: dict[int, float] = {}

    def __enter__(self) -> ActorCPU:
        self._sample()
        self._before, self.seen = self.seen, {}  # workers an earlier run left count from here
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.2)
        self._sample()

    def _sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"MapWorker" not in (entry / "cmdline").read_bytes():
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.seen[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK

    @property
    def total(self) -> float:
        return sum(cpu - self._before.get(pid, 0.0) for pid, cpu in self.seen.items())


def one_process(
    rows: int, url: str, concurrency: int, folder: Path, source: Path
) -> dict[str, float]:
    out = folder / "one.parquet"
    args = [sys.executable, "-m", "batchpizza", "run", str(source), "-o", str(out)]
    args += ["--base-url", url, "--rate", "0", "--concurrency", str(concurrency), "-q"]
    started = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("batchpizza run failed")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "rows_per_s": rows / wall, "cpu_us_per_row": cpu / rows * 1e6}


def on_ray(rows: int, url: str, per_actor: int, actors: int, table: Any) -> dict[str, float]:
    import ray

    import batchpizza.ray

    blocks = max(8, actors * 4)
    size = -(-rows // blocks)
    ds = ray.data.from_arrow([table.slice(i, size) for i in range(0, rows, size)])
    driver = time.process_time()
    started = time.perf_counter()
    with ActorCPU() as cpu:
        out = batchpizza.ray.answer(
            ds, base_url=url, rate=0, concurrency=per_actor * actors, actors=actors
        )
        done = out.materialize()
    wall = time.perf_counter() - started
    answered = sum(1 for r in done.iter_rows() if r["finish_reason"] == "stop")
    if answered != rows:
        raise SystemExit(f"{actors} actor(s): {answered} of {rows} answered")
    return {
        "wall_s": wall,
        "rows_per_s": rows / wall,
        "cpu_us_per_row": cpu.total / rows * 1e6,
        "actor_processes": len(cpu.seen),
        "driver_cpu_s": time.process_time() - driver,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=int, nargs="?", default=20_000)
    parser.add_argument("--latency", type=float, default=20.0)
    parser.add_argument("--per-actor", type=int, default=16)
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = args.rows
    table = pa.table({"id": [f"r{i}" for i in range(n)], "prompt": [f"q {i}" for i in range(n)]})
    server, url = mock(args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            source = folder / "in.parquet"
            pq.write_table(table, source)
            one = one_process(n, url, args.per_actor, folder, source)
            print("one process:", json.dumps({k: round(v, 2) for k, v in one.items()}), flush=True)
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        print("ray.init:", round(time.perf_counter() - t, 2), "s", flush=True)
        try:
            results = {}
            for actors in (1, 2):
                results[actors] = on_ray(n, url, args.per_actor, actors, table)
                shown = {k: round(v, 2) for k, v in results[actors].items()}
                print(f"ray, {actors} actor(s):", json.dumps(shown), flush=True)
        finally:
            ray.shutdown()
        speedup = results[2]["rows_per_s"] / results[1]["rows_per_s"]
        cpu_ratio = results[2]["cpu_us_per_row"] / one["cpu_us_per_row"]
        print(f"rows/s, 2 actors / 1 actor: {speedup:.2f}x (target >= 1.5x)")
        print(f"CPU per row, actors (2) / one run process: {cpu_ratio:.2f}x (target <= 1.3x)")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
