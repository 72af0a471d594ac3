"""What the Batch API tests share (their mock, the `server` fixture, and `model_a_out` are in
conftest.py): small request files, fast polls, the rows they send, the command they run."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from batchpizza.mock.server import ThreadedMockServer
from tests.conftest import write_jsonl

LIMITS = "40,,0.05,0.2"  # LINES,BYTES,POLL,POLL_CAP: small files, fast polls
KEY = "sk-test-batch-key-123"


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(n)]


def args(inp: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        "run", str(inp), "-o", str(out), "--provider", "openai", "--base-url", f"{base_url}/v1",
        "--no-progress", *extra,
    ]  # fmt: skip


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchpizza", *argv], capture_output=True, text=True, timeout=120
    )


@dataclass(frozen=True)
class Job:
    """One input and output, run against the mock (`run` sends the command there; `on=` to
    another server)."""

    server: ThreadedMockServer
    inp: Path
    out: Path

    @classmethod
    def of(cls, server: ThreadedMockServer, folder: Path, n: int) -> Job:
        """n rows (`rows`) in `folder`/in.jsonl, to answer into `folder`/out.jsonl."""
        return cls(server, write_jsonl(folder / "in.jsonl", rows(n)), folder / "out.jsonl")

    @property
    def checkpoint(self) -> Path:
        return Path(f"{self.out}.checkpoint")

    @property
    def summary(self) -> Path:
        return self.out.with_name("summary.json")

    def argv(self, *extra: str, on: str | None = None) -> list[str]:
        return args(self.inp, self.out, on or self.server.base_url, *extra)

    def run(self, *extra: str, on: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(*self.argv(*extra, on=on))


@dataclass(frozen=True)
class ModelAOut(Job):
    """A Job whose model a run left its batches out, then they finished (conftest.model_a_out)."""

    theirs: frozenset[str] = frozenset()  # model a's batches
