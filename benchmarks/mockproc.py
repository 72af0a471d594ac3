"""The mock server in a process of its own, for the benchmark scripts: timings taken in a thread
of the measuring process would wait for its GIL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def child_env() -> dict[str, str]:
    """This environment without proxies or batchpizza settings, so a run goes to the mock."""
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env = {k: v for k, v in env.items() if not k.startswith("BATCHPIZZA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env


def http(url: str, method: str = "GET") -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


class Server:
    """`batchpizza mock-server` in its own process."""

    def __init__(self, latency_ms: float = 0.0, jitter_ms: float = 0.0, *extra: str) -> None:
        args = [sys.executable, "-m", "batchpizza", "mock-server", "--port", "0"]
        args += ["--latency", str(latency_ms), "--jitter", str(jitter_ms), "--seed", "1", *extra]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=child_env(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.close()
            raise RuntimeError(f"the mock server did not start: {line!r}")
        self.url = line.split("listening on ", 1)[1].strip()

    def stats(self) -> dict[str, Any]:
        return dict(http(f"{self.url}/__stats"))

    def drained(self, timeout: float = 10.0) -> dict[str, Any]:
        """The counters once no request is in flight: a killed client's requests still finish."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.02)
            stats = self.stats()
        return stats

    def reset(self) -> None:
        http(f"{self.url}/__reset", "POST")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (Linux; 0 elsewhere)."""
        try:
            text = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = text.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
