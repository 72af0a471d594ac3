"""The same job on one process (batchpizza.answer) and on a local Ray cluster (batchpizza.ray),
against the mock server in its own process: wall time, the busiest one-second window at the
server, the achieved rate, 429s. Usage: python benchmarks/ray_cluster.py ROWS RATE [--limit R]
(RATE a number or "auto"; --limit makes the mock answer 429 above R/s)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pyarrow as pa


def mock(*args: str) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0", "--latency", "10"]
    server = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, server.stdout.readline().split()[-1]


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/__stats") as reply:
        found: dict[str, Any] = json.load(reply)
    found.pop("answers", None)
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int)
    parser.add_argument("rate")
    parser.add_argument("--limit", default=None)
    parser.add_argument("--only", choices=("process", "ray"), default=None)
    args = parser.parse_args()
    n = args.rows
    rate: Any = args.rate if args.rate.startswith("auto") else float(args.rate)
    extra = ("--rate-limit", args.limit) if args.limit else ()
    table = pa.table({"id": [f"r{i}" for i in range(n)], "prompt": [f"q {i}" for i in range(n)]})

    if args.only in (None, "process"):
        import batchpizza

        server, url = mock(*extra)
        try:
            t = time.perf_counter()
            batchpizza.answer(table, base_url=url, rate=rate, concurrency=8)
            print("one process:", round(time.perf_counter() - t, 1), "s", stats(url), flush=True)
        finally:
            server.terminate()

    if args.only in (None, "ray"):
        import ray

        import batchpizza.ray

        server, url = mock(*extra)
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        print("ray.init:", round(time.perf_counter() - t, 1), "s", flush=True)
        try:
            blocks = [table.slice(i, n // 8) for i in range(0, n, n // 8)]
            t = time.perf_counter()
            out = batchpizza.ray.answer(
                ray.data.from_arrow(blocks), base_url=url, rate=rate, concurrency=8, actors=4
            )
            out.materialize()
            print("ray, 4 actors:", round(time.perf_counter() - t, 1), "s", stats(url))
            status = batchpizza.ray.status(out)
            print("controller:", {k: v for k, v in status.items() if k != "rates"})
        finally:
            ray.shutdown()
            server.terminate()


if __name__ == "__main__":
    main()
