"""Shared fixtures: a fault-injecting fake API on 127.0.0.1, and an isolated environment.

No test ever reaches the network: every base URL points at the mock server on the loopback
interface, and proxy variables are cleared so that nothing is routed elsewhere by accident.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from batchpizza.mock_server import MockConfig, ThreadedMockServer

# Hypothesis: a small profile for local runs, the full one in CI (CI=true is set there).
settings.register_profile("dev", max_examples=30)
settings.register_profile("ci", max_examples=300)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
FULL_FUZZ = bool(os.environ.get("CI"))


def examples(n: int) -> int:
    """`n` examples in CI, a tenth of them locally, so the default run stays fast."""
    return n if FULL_FUZZ else max(10, n // 10)


REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "BATCHPIZZA_PROXY",
        "BATCHPIZZA_BASE_URL",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _server() -> Iterator[ThreadedMockServer]:
    with ThreadedMockServer(MockConfig(seed=1)) as server:
        yield server


@pytest.fixture
def mock_api(_server: ThreadedMockServer) -> Iterator[ThreadedMockServer]:
    """The fake API, reset to a well-behaved server; tests may set `.config` to inject faults."""
    _server.config = MockConfig(seed=1)
    _server.reset()
    yield _server
    _server.config = MockConfig(seed=1)
    _server.reset()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines would also split on U+0085 and U+2028 inside strings.
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


# Options that make a test run fast and deterministic against the local server.
FAST = {
    "rate": 0,
    "backoff_base": 0.001,
    "backoff_cap": 0.01,
    "misuse_backoff": 0.001,
    "retry_after_cap": 0.05,
    "timeout": 2.0,
    "progress": False,
    "quiet": True,
}
