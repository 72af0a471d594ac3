"""batchpizza's benchmark: our machinery next to a bare aiohttp loop, against the local mock server.

    python benchmarks/bench.py                       # every scenario but scale, full size (~20 min)
    python benchmarks/bench.py --scenario scale      # 10,000,000 rows (~10 min, ~7 GB of disk)
    python benchmarks/bench.py --quick               # every scenario shrunk, a smoke run (~1 min)
    python benchmarks/bench.py --scenario overhead latency --repeat 5
    python benchmarks/bench.py --record              # also append the table to RESULTS.md
    python benchmarks/bench.py --scenario overhead --profile   # and batchpizza's top 10 functions

Every party runs in its own process, so none shares an event loop or a GIL with another: the mock
server (`python -m batchpizza mock-server --port 0`), batchpizza (`python -m batchpizza run ...`)
and the bare loop (this file with `--bare`: a semaphore over `session.post`, no retries, no pacing,
no checkpoint, answers kept in memory and written once, on the event loop batchpizza would use).
Wall time, CPU time and peak RSS (ru_maxrss, in MiB) of each run are taken from outside, with
os.wait4 on the child. With two cores or more, the measured child is pinned to the first and the
mock server to the second. Where both are run, batchpizza and the bare loop alternate (A B B A A B
...: each side first in half the rounds) so that drift of a shared machine, and whatever favours
the first run of a round, falls on both; medians are reported.

Scenarios (full size; --quick in brackets):
- startup: `python -c pass`, `batchpizza --version`, `--help`, `status` and a one-row run to
  JSONL and to Parquet, interleaved, median wall and peak RSS (targets: 0.2 s for the commands
  that send nothing, 0.5 s for a one-row run); then a one-row Parquet run through steps.py, which
  times its steps inside (interpreter start-up, imports, checkpoint creation, scan, sending,
  output, interpreter exit).
- overhead: 20,000 prompts [1,000] and one prompt, zero latency, concurrency 64, batchpizza with
  every control on (as in controls) and the bare loop alternating, on uvloop's event loop (a
  plain install) and then on asyncio's (BATCHPIZZA_LOOP=asyncio; the bare loop too). The target
  is the per-row wall time after each side's one-row time, paired: (T(20,000) - T(1)) / 19,999,
  batchpizza's over the bare loop's, at most 1.00x. Also the same in CPU time, the whole job's
  ratio (start-up included), the one-row times and peak RSS. With --profile, one more batchpizza
  run under cProfile (not measured) and its top 10 functions by self time.
- controls: the overhead job with every control on, `--rate auto:100000` starting from a learned
  rate of 100,000/s, against the same job at `--rate 0`, alternating: the CPU ratio (target from
  issue 16: within 5 %), and whether the learned rate stayed at 100,000 (nothing was cut).
- tokens: the overhead job with `--max-cost` and `--tpm` on (too high to bind: every attempt is
  reserved, booked and settled all the same) against it without them, alternating: the CPU
  ratio (target from issue 23: within 3 %).
- identity: the overhead job (`--rate 0`) as it runs, against the same job with the request
  fingerprint taken out (the runner keying each answer by the digest of its prompt's text alone,
  as checkpoints did before fingerprints), both started by the same small wrapper, alternating:
  the CPU ratio is what fingerprinting costs a row (target from issue 21: within 2 %). Also in
  process: what a row's digests cost whole (the scan's and the runner's key, the hashing that
  was there before fingerprints included), as a share of a row's CPU.
- latency: 5,000 prompts [1,000], 200 +- 50 ms latency, concurrency 256. Requests/s of the sending
  phase as a fraction of the bound 256 / 0.2 s = 1,280/s, measured at the server: requests over the
  span from the first arrival to the last arrival plus the mean latency (when the last reply is
  due). For an ideal closed loop of C workers that span is N * L / C, so the ideal scores C / L.
- pacing: --rate 50 for 30 s [5 s] (1,500 rows): the rate the server saw (arrivals - 1 over the
  span of arrivals) and the most arrivals in any one-second window.
- memory: peak RSS of batchpizza at 100,000 and 1,000,000 rows [5,000 and 50,000], zero latency,
  Parquet output (target: at most 120 MiB at 1,000,000 rows, at most 1.1x the 100,000-row peak).
- resume: a 1,000,000-row [50,000] job 99.9% done, the last 0.1% still to send (as after a kill
  near the end): seconds from process start until the server sees the first request. The
  checkpoint is written directly (not by sending a million requests) and copied for each run;
  each run is left to finish, which checks that exactly the missing rows are sent. Two runs: one
  with no scan kept beside the checkpoint (a new or changed input: everything is validated
  again), then the rerun of the same command, which reuses the scan the first one kept (what a
  resume after a kill does); the target is judged on the rerun.
- validation: `batchpizza run` on a 1,000,000-row [50,000] JSONL whose last line is broken: it
  reads and validates every row, sends nothing and exits 2; its wall time is the validation cost.
- scale (only when named): 10,000,000 rows [200,000] of about 80-byte prompts: validation of the
  whole input (target 50 s), the resume scenario's two runs (target: the rerun's first request
  within 5 s), their peak RSS against the same runs at 1,000,000 rows (within 1.1x), and the
  checkpoint's size per row.
- api: `batchpizza.answer(frame)` on a 100,000-row [5,000] pandas DataFrame against
  `batchpizza.run(file)` on the same rows as a Parquet file, zero latency, concurrency 64, rate 0,
  alternating. Both children (this file with `--api`) import pandas and read the Parquet file into
  a DataFrame first, so the CPU ratio of the whole processes is the ratio of the two jobs.
- schema: the overhead job (20,000 rows [1,000], Parquet output) with `--schema` (a 5-field
  JSON Schema) against the same requests without it (prompts holding the instruction and schema
  already, so the server's work, bodies and answers are alike), alternating, on a mock that
  answers every schema-bound request with valid JSON (no re-asks): the CPU ratio (target from
  issue 25: under 5 %), and the in-process time to find and validate one answer.

The targets (issue 6) are for the full sizes on a 2-core machine; a --quick run says "quick" where
a target depends on the size. Generated inputs live in benchmarks/work/ (git-ignored) and are
reused by later runs.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mockproc import Server, child_env

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
GENERATION = 5  # bump when the checkpoint schema or the scan changes
WORDS = ("basil", "mozzarella", "anchovies", "capers", "truffle", "nduja", "pineapple", "figs")
LIBRARIES = (
    "batchpizza",
    "aiohttp",
    "yarl",
    "multidict",
    "orjson",
    "uvloop",
    "pyarrow",
    "tenacity",
)


@dataclass(frozen=True)
class Sizes:
    overhead: int
    latency: int
    pacing_seconds: int
    memory: tuple[int, int]
    resume: int
    validation: int
    api: int
    scale: int


FULL = Sizes(20_000, 5_000, 30, (100_000, 1_000_000), 1_000_000, 1_000_000, 100_000, 10_000_000)
QUICK = Sizes(1_000, 1_000, 5, (5_000, 50_000), 50_000, 50_000, 5_000, 200_000)
# The third round's memory targets: a 1,000,000-row run (Parquet output) at most 120 MiB, flat
# from 100,000 rows; at 10,000,000 rows within 1.1x of 1,000,000.
MEMORY_TARGET_MIB, FLAT_TARGET = 120.0, 1.1
SCALE_VALIDATION_TARGET, SCALE_RESUME_TARGET = 50.0, 5.0
API_TARGET = 1.03  # answer() on a DataFrame costs no more CPU than run() on the same rows' file
OVERHEAD_CONCURRENCY = 64
# Issue 16, third round: per row, no slower than the bare loop on the same event loop, with every
# control on.
PER_ROW_TARGET = 1.0
# The third round's start-up targets: a one-row run, and the commands that send nothing.
ONE_ROW_TARGET, COMMAND_TARGET = 0.5, 0.2
# Issue 16: everything on costs no more than 5 % (the adaptive controller at a rate it never
# reaches, against no rate limit at all).
AUTO_MAX = 100_000.0
CONTROLS_TARGET = 1.05
# Issue 25: validating every answer against a 5-field schema (and typing the parsed column) costs
# under 5 % of the CPU of the same job without --schema, at zero latency.
SCHEMA_TARGET = 1.05
SCHEMA5 = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "tags": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "stars", "tags", "reason"],
    "additionalProperties": False,
}
TOKENS_TARGET = 1.03  # issue 23: the token budget within 3 % of the CPU at zero latency
IDENTITY_TARGET = 1.02  # issue 21: request fingerprints within 2 % of the CPU at zero latency
# Starts `batchpizza ARGS` as `python -m batchpizza` does, after taking the request fingerprint
# out when told "unkeyed": the runner then keys every answer by the digest of its prompt's text
# alone, as checkpoints did before fingerprints (the scan's digest of a prompt row is that digest
# already). Both sides of the identity scenario start through it, so that their start-up is the
# same.
UNKEYED_WRAPPER = """
import sys
if sys.argv[1] == "unkeyed":
    import batchpizza.engine.runner, batchpizza.job.sending, batchpizza.rows
    digest = batchpizza.rows.prompt_digest
    def request_key(provider):
        return lambda prompt: digest(prompt.text)
    for module in (batchpizza.rows, batchpizza.engine.runner, batchpizza.job.sending):
        assert module.request_key
        module.request_key = request_key
from batchpizza.cli import main
sys.argv = ["batchpizza", *sys.argv[2:]]
main()
"""
LATENCY_MS, JITTER_MS, LATENCY_CONCURRENCY = 200.0, 50.0, 256
PACING_RATE = 50
CHECKPOINT_FILES = (".checkpoint", ".checkpoint-wal", ".checkpoint-shm")


# -- the bare loop (runs in its own process: bench.py --bare ...) ----------------------------------


def api_main(kind: str, input_path: str, output_path: str, url: str, concurrency: int) -> int:
    """One side of the api scenario: the same DataFrame read either way, then `answer()` on it
    (kind "answer") or `run()` on its file (kind "run")."""
    import pandas as pd

    import batchpizza

    frame = pd.read_parquet(input_path)
    opts: dict[str, Any] = {
        "base_url": url,
        "concurrency": concurrency,
        "rate": 0,
        "quiet": True,
        "progress": False,
    }
    if kind == "answer":
        out = batchpizza.answer(frame, **opts)
        return 0 if len(out) == len(frame) and (out["finish_reason"] == "stop").all() else 3
    return int(batchpizza.run(input_path, output_path, **opts)["exit_code"])


def bare_main(input_path: str, output_path: str, endpoint: str, concurrency: int) -> int:
    """What a user would write without batchpizza: read everything, gather under a semaphore,
    write once. Headers come from the parent (batchpizza's headers_for), so that this process
    does not import batchpizza. It runs on the event loop batchpizza would run on in the same
    environment (BATCHPIZZA_LOOP=asyncio: asyncio's; else uvloop's where installed), so that a
    comparison is of the machinery, not of the loops."""
    headers = json.loads(os.environ["BENCH_BARE_HEADERS"])
    with Path(input_path).open("rb") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    send = _bare_send([row["prompt"] for row in rows], endpoint, headers, concurrency)
    if os.environ.get("BATCHPIZZA_LOOP") == "asyncio":
        answers = asyncio.run(send)
    else:
        import uvloop

        answers = uvloop.run(send)
    lines = [
        json.dumps({"id": row.get("id"), "answer": answer}) + "\n"
        for row, answer in zip(rows, answers, strict=True)
    ]
    with Path(output_path).open("w", encoding="utf-8") as handle:
        handle.write("".join(lines))
    return 0 if all(answer is not None for answer in answers) else 3


async def _bare_send(
    prompts: list[str], endpoint: str, headers: dict[str, str], concurrency: int
) -> list[str | None]:
    import aiohttp  # here: the other children of this file never import it

    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(prompt: str) -> str:
            async with (
                semaphore,
                session.post(endpoint, json={"question": prompt}, headers=headers) as resp,
            ):
                reply = json.loads(await resp.read())
                return str(reply["answer"]["content"])

        results = await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
    return [r if isinstance(r, str) else None for r in results]


# -- processes --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured child process."""

    wall: float
    cpu: float
    rss_mb: float
    rc: int
    stderr: str
    server_busy: float  # the server's CPU seconds over the run's wall time
    first_request: float | None = None  # seconds from start until the server saw a request
    # With `parts`: the most anonymous memory (the process's own) and the most file-backed
    # memory (mapped pages of shared libraries, pyarrow's above all) seen in /proc while it ran,
    # in MiB. Peak RSS counts both; the second depends on the machine (how much of a library
    # the kernel maps around each page touched), not on batchpizza.
    anon_mb: float | None = None
    file_mb: float | None = None


# With two cores or more, each party has one of its own: the measured child the first, the mock
# server the second (as a user's job and a remote server do not share a core).
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
CHILD_CORE, SERVER_CORE = (CORES[0], CORES[1]) if len(CORES) >= 2 else (None, None)


def pin_child() -> None:
    if CHILD_CORE is not None:
        os.sched_setaffinity(0, {CHILD_CORE})


def pin_server(server: Server) -> None:
    if SERVER_CORE is None:
        return
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():  # every thread it has
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {SERVER_CORE})


def measure(
    args: Sequence[str],
    server: Server,
    *,
    watch_first: bool = False,
    parts: bool = False,
    env: dict[str, str] | None = None,
) -> Run:
    """Run `args` to its end, pinned to the child's core; rusage of the child itself via
    os.wait4. `env` is added to the child's environment. With `parts`, /proc is read every
    20 ms for the most anonymous and file-backed memory."""
    err_path = WORK / "child.stderr"
    child = child_env()
    child["BENCH_BARE_HEADERS"] = json.dumps(headers(server.url))
    child.update(env or {})
    first: float | None = None
    with err_path.open("wb") as err:
        server_cpu = server.cpu_seconds()
        started = time.perf_counter()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=ROOT,
            env=child,
            preexec_fn=pin_child,  # safe: this process runs no threads of its own
        )
        pid = 0
        most = {"RssAnon": 0, "RssFile": 0}
        while parts and not pid:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if not pid:
                rss_parts(proc.pid, most)
                time.sleep(0.02)
        while watch_first and first is None and not pid:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if server.stats()["requests"] > 0:
                first = time.perf_counter() - started
            else:
                time.sleep(0.01)
        if not pid:
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        server_cpu = server.cpu_seconds() - server_cpu
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        rc=proc.returncode,
        stderr=err_path.read_text(errors="replace"),
        server_busy=server_cpu / wall,
        first_request=first,
        anon_mb=most["RssAnon"] / 1024 if parts else None,
        file_mb=most["RssFile"] / 1024 if parts else None,
    )


def rss_parts(pid: int, most: dict[str, int]) -> None:
    """Raise `most`'s figures (KiB) to what /proc says of `pid` now, where it says."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in most:
                most[name] = max(most[name], int(value.split()[0]))


def headers(url: str) -> dict[str, str]:
    from batchpizza.providers.pizzagpt import headers_for

    return headers_for(url)


def fresh(output: Path) -> Path:
    """Remove an earlier run's output, checkpoint, lock and kept scan: every run starts cold."""
    for suffix in ("", *CHECKPOINT_FILES, ".checkpoint.lock", ".checkpoint.scan"):
        output.with_name(output.name + suffix).unlink(missing_ok=True)
    output.with_name(output.name + ".checkpoint.scan.partial").unlink(missing_ok=True)
    return output


def restore_checkpoint(pristine: Path, output: Path) -> None:
    """Put the pristine checkpoint in place for `output`, leaving anything else (the kept scan)."""
    for suffix in CHECKPOINT_FILES:
        output.with_name(output.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(pristine, output.with_name(output.name + ".checkpoint"))


def forget_answers(output: Path, rows: range) -> None:
    """Take these rows' answers out of `output`'s checkpoint, and put them back in its kept to-do
    set, as a run killed before it sent them leaves it (a benchmark's set-up, not a run)."""
    import sqlite3

    conn = sqlite3.connect(output.with_name(output.name + ".checkpoint"))
    try:
        conn.executemany("DELETE FROM results WHERE id = ?", [(row_id(i),) for i in rows])
        conn.executemany("INSERT OR IGNORE INTO todo VALUES (?)", [(i,) for i in rows])
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def batchpizza_args(
    input_path: Path, output: Path, server: Server, *, concurrency: int, rate: str = "0"
) -> list[str]:
    return [
        *(sys.executable, "-m", "batchpizza", "run", str(input_path), "-o", str(output)),
        *("--base-url", server.url, "--concurrency", str(concurrency), "--rate", rate),
        *("-q", "--no-progress"),
    ]


def bare_args(input_path: Path, output: Path, server: Server, *, concurrency: int) -> list[str]:
    from batchpizza.providers.pizzagpt import API_ENDPOINT

    endpoint = server.url + API_ENDPOINT
    script = str(Path(__file__).resolve())
    return [
        sys.executable,
        script,
        "--bare",
        str(input_path),
        str(output),
        endpoint,
        str(concurrency),
    ]


def turns(i: int, pair: tuple[T, ...]) -> tuple[T, ...]:
    """The two sides of a paired comparison in round i: A B, then B A, and so on, so that
    whatever favours the first (or second) run of a round falls on both sides alike."""
    return pair if i % 2 == 0 else pair[::-1]


def expect(run: Run, rc: int, what: str) -> None:
    if run.rc != rc:
        tail = "\n".join(run.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{what} exited {run.rc}, expected {rc}:\n{tail}")


# -- inputs -----------------------------------------------------------------------------------------


def row_id(i: int) -> str:
    return f"r{i:07d}"


def prompt_of(i: int) -> str:
    word = WORDS[i % len(WORDS)]
    return f"Row {i}: which wine goes with a pizza with {word}? Answer in one sentence."


def prompts_file(n: int) -> Path:
    """n prompt rows (id, prompt, one carried field), generated once and reused."""
    path = WORK / f"prompts-{GENERATION}-{n}.jsonl"
    if path.exists():
        return path
    note(f"generating {path.name}")
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for start in range(0, n, 10_000):
            handle.writelines(
                f'{{"id": "{row_id(i)}", "prompt": "{prompt_of(i)}", '
                f'"topic": "{WORDS[i % len(WORDS)]}"}}\n'
                for i in range(start, min(n, start + 10_000))
            )
    tmp.replace(path)
    return path


def broken_last_file(n: int) -> Path:
    """n good rows, then one line that is not JSON."""
    path = WORK / f"prompts-{GENERATION}-{n}-broken-last.jsonl"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(prompts_file(n), tmp)
    with tmp.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "broken", "prompt": "this line never ends\n')
    tmp.replace(path)
    return path


def resume_checkpoint(n: int) -> tuple[Path, int]:
    """A checkpoint in which the first 99.9% of the n rows are answered; and how many are not."""
    from batchpizza.checkpoint import Checkpoint
    from batchpizza.config import DEFAULT_MODEL
    from batchpizza.identities import identity_of
    from batchpizza.mock.replies import mock_answer
    from batchpizza.records import Result
    from batchpizza.rows import prompt_digest

    missing = n // 1000
    path = WORK / f"resume-{GENERATION}-{n}-fp.checkpoint.pristine"
    if path.exists():
        return path, missing
    note(f"writing {path.name}")
    tmp = path.with_suffix(".tmp")
    for suffix in ("", "-wal", "-shm"):
        tmp.with_name(tmp.name + suffix).unlink(missing_ok=True)
    store = Checkpoint.open(tmp)
    try:
        # Answers of the requests a default run makes (its fingerprints' identity).
        store.use_identity(identity_of("pizzagpt", None, {}))
        for start in range(0, n - missing, 50_000):
            store.write(
                [
                    Result(
                        row_id(i),
                        prompt_digest(prompt_of(i)),
                        "stop",
                        mock_answer(prompt_of(i)),
                        None,
                        1,
                        12.5,
                        DEFAULT_MODEL,
                    )
                    for i in range(start, min(n - missing, start + 50_000))
                ]
            )
    finally:
        store.close()
    if tmp.with_name(tmp.name + "-wal").exists():
        raise RuntimeError(f"{tmp} still has a write-ahead log after closing")
    tmp.replace(path)
    return path, missing


# -- scenarios --------------------------------------------------------------------------------------


@dataclass
class Figure:
    scenario: str
    figure: str
    value: str
    target: str = ""
    met: bool | str | None = None  # None: no target; a string: why it cannot be judged


@dataclass
class Bench:
    sizes: Sizes
    quick: bool
    repeat: int
    profile: bool = False
    profiles: list[str] = field(default_factory=list)
    servers: dict[tuple[float, float], Server] = field(default_factory=dict)
    memory_peak: float | None = None
    resume_peak: float | None = None
    _startup: float | None = None

    def server(self, latency_ms: float = 0.0, jitter_ms: float = 0.0) -> Server:
        key = (latency_ms, jitter_ms)
        if key not in self.servers:
            self.servers[key] = Server(latency_ms, jitter_ms)
            pin_server(self.servers[key])
        return self.servers[key]

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def startup(self) -> float:
        """Wall time of `python -m batchpizza --version`: interpreter start-up and imports."""
        if self._startup is None:
            walls = []
            for _ in range(3):  # the quickest of three: start-up is short and the machine noisy
                run = measure([sys.executable, "-m", "batchpizza", "--version"], self.server())
                expect(run, 0, "batchpizza --version")
                walls.append(run.wall)
            self._startup = min(walls)
        return self._startup

    def per_million(self, seconds: float, rows: int) -> str:
        """On a --quick run: what `seconds` for `rows` rows suggests for a million (start-up
        once, the rest in proportion)."""
        if rows == 1_000_000:
            return ""
        startup = self.startup()
        guess = startup + max(0.0, seconds - startup) * 1_000_000 / rows
        return f" (~{guess:.1f} s for 1M, extrapolated)"

    def sized(self, met: bool) -> bool | str:
        """A size-dependent target cannot be judged on a --quick run (at 1,000 rows start-up
        dominates the overhead ratio, and ramp-up the latency figure)."""
        return "quick" if self.quick else met

    def alternate(
        self,
        input_path: Path,
        server: Server,
        concurrency: int,
        rows: int,
        name: str,
        *,
        env: dict[str, str] | None = None,
        controls: bool = False,
    ) -> tuple[list[Run], list[Run], list[dict[str, Any]], list[dict[str, Any]]]:
        """batchpizza and the bare loop, A B, B A, A B ..., each on a freshly reset server, both with
        `env` (the event loop). With `controls`, batchpizza runs with every control on (as in
        the controls scenario: `--rate auto:100000` from a learned rate of 100,000/s)."""
        ours: list[Run] = []
        bare: list[Run] = []
        ours_stats: list[dict[str, Any]] = []
        bare_stats: list[dict[str, Any]] = []
        for i in range(self.repeat):
            for kind in turns(i, ("batchpizza", "bare")):
                output = fresh(WORK / f"{name}-{kind}.jsonl")
                if kind == "batchpizza":
                    rate = "0"
                    if controls:
                        seed_learned_rate(output, AUTO_MAX)
                        rate = f"auto:{AUTO_MAX:g}"
                    args = batchpizza_args(
                        input_path, output, server, concurrency=concurrency, rate=rate
                    )
                else:
                    args = bare_args(input_path, output, server, concurrency=concurrency)
                server.reset()
                run = measure(args, server, env=env)
                expect(run, 0, kind)
                stats = server.stats()
                if stats["requests"] != rows:
                    raise RuntimeError(f"{kind} sent {stats['requests']} requests for {rows} rows")
                (ours if kind == "batchpizza" else bare).append(run)
                (ours_stats if kind == "batchpizza" else bare_stats).append(stats)
                note(
                    f"  {name} {i + 1}/{self.repeat} {kind:<10} {run.wall:7.2f} s wall "
                    f"{run.cpu:7.2f} s cpu {run.rss_mb:6.0f} MB, server busy {run.server_busy:.0%}"
                )
        return ours, bare, ours_stats, bare_stats


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    if len(values) < 2:
        return ""
    return f" (n={len(values)}: {fmt.format(min(values))}-{fmt.format(max(values))})"


# The two event loops batchpizza may run on: uvloop's (a plain install, where uvloop builds) and
# asyncio's (BATCHPIZZA_LOOP=asyncio, or where uvloop does not build). The bare loop is given the
# same one each time.
LOOPS: dict[str, dict[str, str]] = {"uvloop": {}, "asyncio": {"BATCHPIZZA_LOOP": "asyncio"}}


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def overhead(bench: Bench) -> list[Figure]:
    """The job of `rows` rows and a one-row job, batchpizza (every control on) and the bare loop
    alternating, on each event loop. The per-row cost of a side is its wall (or CPU) time over
    the rows after its own one-row time: (T(rows) - T(1)) / (rows - 1), paired by round, so
    that start-up (interpreter, imports, the one-off set-up) is left out of the ratio."""
    rows = bench.sizes.overhead
    server = bench.server()
    input_path, one_row = prompts_file(rows), prompts_file(1)
    figures: list[Figure] = []
    for loop, env in LOOPS.items():
        if loop == "uvloop" and not have_uvloop():
            figures.append(Figure(loop, "uvloop", "not installed: not measured"))
            continue
        s = f"overhead, {loop}"
        ours, bare, _, _ = bench.alternate(
            input_path,
            server,
            OVERHEAD_CONCURRENCY,
            rows,
            f"overhead-{loop}",
            env=env,
            controls=True,
        )
        ours1, bare1, _, _ = bench.alternate(
            one_row, server, OVERHEAD_CONCURRENCY, 1, f"one-row-{loop}", env=env, controls=True
        )
        wall_ratios = [a.wall / b.wall for a, b in zip(ours, bare, strict=True)]
        per_row = {
            what: [
                (_get(a, what) - _get(a1, what)) / (_get(b, what) - _get(b1, what))
                for a, a1, b, b1 in zip(ours, ours1, bare, bare1, strict=True)
            ]
            for what in ("wall", "cpu")
        }
        wall_per_row = median(per_row["wall"])
        figures += [
            Figure(
                s,
                f"per-row wall time after the one-row time, batchpizza / bare loop ({rows:,} rows, paired)",
                f"{wall_per_row:.3f}x" + spread(per_row["wall"], "{:.3f}"),
                f"<= {PER_ROW_TARGET:.2f}x",
                bench.sized(wall_per_row <= PER_ROW_TARGET),
            ),
            Figure(
                s,
                "per-row CPU time after the one-row time, batchpizza / bare loop (paired)",
                f"{median(per_row['cpu']):.3f}x" + spread(per_row["cpu"], "{:.3f}"),
            ),
            Figure(
                s,
                "per row, batchpizza / bare loop (wall)",
                f"{_after_one(ours, ours1, rows) * 1e6:.1f} / {_after_one(bare, bare1, rows) * 1e6:.1f} us",
            ),
            Figure(
                s,
                f"whole job wall time, batchpizza / bare loop ({rows:,} rows, paired)",
                f"{median(wall_ratios):.2f}x" + spread(wall_ratios),
            ),
            Figure(s, "wall time, batchpizza", _wall(ours, rows)),
            Figure(s, "wall time, bare loop", _wall(bare, rows)),
            Figure(
                s,
                "one-row job wall time, batchpizza / bare loop",
                f"{median([r.wall for r in ours1]):.2f} / {median([r.wall for r in bare1]):.2f} s",
            ),
            Figure(
                s,
                "peak RSS, batchpizza / bare loop",
                f"{median([r.rss_mb for r in ours]):.0f} / {median([r.rss_mb for r in bare]):.0f} MiB",
            ),
        ]
    if bench.profile:
        bench.profiles.append(profile_batchpizza(input_path, server, rows))
    return figures


def _get(run: Run, what: str) -> float:
    return float(getattr(run, what))


def _after_one(runs: list[Run], one_row: list[Run], rows: int) -> float:
    return (median([r.wall for r in runs]) - median([r.wall for r in one_row])) / (rows - 1)


def seed_learned_rate(output: Path, rate: float) -> None:
    """A checkpoint for `output` holding only a learned rate, as an earlier `--rate auto` run
    leaves it: the run then starts at that rate instead of slow start from 1/s."""
    from batchpizza.checkpoint import Checkpoint

    store = Checkpoint.open(output.with_name(output.name + ".checkpoint"))
    try:
        store.set_meta(learned_rate=rate)
    finally:
        store.close()


def learned_rate_of(output: Path) -> float | None:
    from batchpizza.checkpoint import Checkpoint

    store = Checkpoint.open(output.with_name(output.name + ".checkpoint"), create=False)
    try:
        return store.learned_rate()
    finally:
        store.close()


def controls(bench: Bench) -> list[Figure]:
    """The overhead scenario's job with every control on (`--rate auto:100000`, from a learned
    rate of 100,000/s, so the pacer, the learned rate and the breaker all see every attempt)
    against the same job at `--rate 0`, alternating."""
    rows = bench.sizes.overhead
    server = bench.server()
    input_path = prompts_file(rows)
    runs: dict[str, list[Run]] = {"auto": [], "fixed": []}
    end_rates: list[float | None] = []
    for i in range(bench.repeat):
        for kind, rate in turns(i, (("auto", f"auto:{AUTO_MAX:g}"), ("fixed", "0"))):
            output = fresh(WORK / f"controls-{kind}.jsonl")
            if kind == "auto":
                seed_learned_rate(output, AUTO_MAX)
            args = batchpizza_args(
                input_path, output, server, concurrency=OVERHEAD_CONCURRENCY, rate=rate
            )
            server.reset()
            run = measure(args, server)
            expect(run, 0, f"batchpizza --rate {rate}")
            if (sent := server.stats()["requests"]) != rows:
                raise RuntimeError(f"--rate {rate} sent {sent} requests for {rows} rows")
            if kind == "auto":
                end_rates.append(learned_rate_of(output))
            runs[kind].append(run)
            note(
                f"  controls {i + 1}/{bench.repeat} {kind:<6} {run.wall:7.2f} s wall {run.cpu:7.2f} s cpu"
            )
    auto, fixed = runs["auto"], runs["fixed"]
    cpu_ratios = [a.cpu / b.cpu for a, b in zip(auto, fixed, strict=True)]
    wall_ratios = [a.wall / b.wall for a, b in zip(auto, fixed, strict=True)]
    cpu_ratio = median(cpu_ratios)
    s = "controls"
    return [
        Figure(
            s,
            f"CPU time, --rate auto:{AUTO_MAX:,.0f} / --rate 0 ({rows:,} rows, paired)",
            f"{cpu_ratio:.3f}x" + spread(cpu_ratios, "{:.3f}"),
            f"<= {CONTROLS_TARGET:.2f}x",
            bench.sized(cpu_ratio <= CONTROLS_TARGET),
        ),
        Figure(
            s,
            "wall time, auto / 0 (paired)",
            f"{median(wall_ratios):.3f}x" + spread(wall_ratios, "{:.3f}"),
        ),
        Figure(s, "CPU per row, --rate auto", _per_row(auto, rows)),
        Figure(s, "CPU per row, --rate 0", _per_row(fixed, rows)),
        Figure(
            s,
            "learned rate at the end (runs that kept it)",
            f"{sum(r == AUTO_MAX for r in end_rates)} of {len(end_rates)}",
        ),
    ]


def overhead_pairs(
    bench: Bench, name: str, sides: dict[str, Callable[[list[str]], list[str]] | None]
) -> dict[str, list[Run]]:
    """The overhead job (`--rate 0`, JSONL) run by each side in turn, `bench.repeat` rounds,
    each side's command line made from the plain one by its function (None: as it is); every
    run checked to have sent and written every row."""
    rows = bench.sizes.overhead
    server = bench.server()
    input_path = prompts_file(rows)
    runs: dict[str, list[Run]] = {kind: [] for kind in sides}
    for i in range(bench.repeat):
        for kind in turns(i, tuple(sides)):
            output = fresh(WORK / f"{name}-{kind}.jsonl")
            args = batchpizza_args(input_path, output, server, concurrency=OVERHEAD_CONCURRENCY)
            made = sides[kind]
            server.reset()
            run = measure(args if made is None else made(args), server)
            expect(run, 0, f"batchpizza ({kind})")
            if (sent := server.stats()["requests"]) != rows:
                raise RuntimeError(f"{kind} sent {sent} requests for {rows} rows")
            if sum(1 for _ in output.open("rb")) != rows:
                raise RuntimeError(f"{kind} wrote other than {rows} rows")
            runs[kind].append(run)
            note(
                f"  {name} {i + 1}/{bench.repeat} {kind:<8} {run.wall:7.2f} s wall "
                f"{run.cpu:7.2f} s cpu"
            )
    return runs


def tokens(bench: Bench) -> list[Figure]:
    """The overhead scenario's job with the token budget on (`--max-cost` and `--tpm` set so
    high that neither binds, so that every attempt is reserved, booked and settled) against the
    same job without them, alternating. Pizzagpt's replies carry no usage: the rows get the
    estimate, which the budget settles with."""
    rows = bench.sizes.overhead
    budget_args = ["--max-cost", "1000000", "--price", "1,2", "--tpm", "1e12"]
    runs = overhead_pairs(bench, "tokens", {"budget": lambda a: a + budget_args, "plain": None})
    budget, plain = runs["budget"], runs["plain"]
    cpu_ratios = [a.cpu / b.cpu for a, b in zip(budget, plain, strict=True)]
    cpu_ratio = median(cpu_ratios)
    # The same cost measured apart from the noise of whole runs on a shared machine: the gate's
    # path per attempt with the meter and without, in this process, as a share of a row's CPU.
    extra_us = meter_cost_us()
    row_us = median([r.cpu for r in plain]) / rows * 1e6
    s = "tokens"
    return [
        Figure(
            s,
            f"CPU time, --max-cost and --tpm on / off ({rows:,} rows, paired)",
            f"{cpu_ratio:.3f}x" + spread(cpu_ratios, "{:.3f}"),
            f"<= {TOKENS_TARGET:.2f}x",
            bench.sized(cpu_ratio <= TOKENS_TARGET),
        ),
        Figure(
            s,
            "the meter per attempt (reserve, book, settle; in process), share of a row's CPU",
            f"{extra_us:.2f} us, {extra_us / row_us:.1%} of {row_us:.0f} us",
        ),
        Figure(s, "CPU per row, budget on", _per_row(budget, rows)),
        Figure(s, "CPU per row, budget off", _per_row(plain, rows)),
    ]


def identity(bench: Bench) -> list[Figure]:
    """The overhead job at `--rate 0` with its request fingerprints and without them (see
    UNKEYED_WRAPPER), alternating, CPU paired; and the digests of a row in process."""
    rows = bench.sizes.overhead

    def wrapped(kind: str) -> Callable[[list[str]], list[str]]:
        return lambda args: [args[0], "-c", UNKEYED_WRAPPER, kind, *args[3:]]  # not -m batchpizza

    runs = overhead_pairs(bench, "identity", {k: wrapped(k) for k in ("keyed", "unkeyed")})
    keyed, unkeyed = runs["keyed"], runs["unkeyed"]
    cpu_ratios = [a.cpu / b.cpu for a, b in zip(keyed, unkeyed, strict=True)]
    cpu_ratio = median(cpu_ratios)
    digest_us = digests_cost_us()
    row_us = median([r.cpu for r in keyed]) / rows * 1e6
    s = "identity"
    return [
        Figure(
            s,
            f"CPU time, with request fingerprints / without ({rows:,} rows, paired)",
            f"{cpu_ratio:.3f}x" + spread(cpu_ratios, "{:.3f}"),
            f"<= {IDENTITY_TARGET:.2f}x",
            bench.sized(cpu_ratio <= IDENTITY_TARGET),
        ),
        Figure(
            s,
            "a row's digests (the scan's and the runner's key; in process), share of its CPU",
            f"{digest_us:.2f} us, {digest_us / row_us:.1%} of {row_us:.0f} us",
        ),
        Figure(s, "CPU per row, with fingerprints", _per_row(keyed, rows)),
        Figure(s, "CPU per row, without", _per_row(unkeyed, rows)),
    ]


def digests_cost_us(n: int = 200_000) -> float:
    """Microseconds of CPU a row's digests take: the scan's (rows.digests of the row as read)
    and the runner's key of its answer (rows.request_key, for Pizzagpt), best of three."""
    from batchpizza.fingerprint import BY_TEXT
    from batchpizza.records import Prompt
    from batchpizza.rows import digests, request_key

    class Pizzagpt:
        def __init__(self) -> None:
            self.identity = {"provider": "pizzagpt", **BY_TEXT}

    text = prompt_of(1)
    prompt = Prompt("r1", text, ({"role": "user", "content": text},))  # as a row makes it
    read = ("r1", text, None, None)
    key = request_key(Pizzagpt())
    best = math.inf
    for _ in range(3):
        started = time.process_time()
        for _ in range(n):
            digests(read)
            key(prompt)
        best = min(best, (time.process_time() - started) / n * 1e6)
    return best


def meter_cost_us(n: int = 200_000) -> float:
    """Microseconds of CPU the meter adds to an attempt's way through the gate: Control's
    enter and finished without a meter against enter_for and finished with a budget and a token
    pacer that never bind (the fast path a run at full speed takes), best of three."""
    import asyncio

    from batchpizza.controls.budget import Budget
    from batchpizza.controls.control import Control
    from batchpizza.controls.metering import Meter
    from batchpizza.controls.tokens import TokenPacer
    from batchpizza.pricing import Price
    from batchpizza.records import Prompt

    def control(meter: Meter | None) -> Control:
        return Control(rate=0, auto_max=None, learned=None, patience=600, retry_after_cap=300,
                       timeout=60, on_give_up=lambda: None, meter=meter)  # fmt: skip

    async def per_attempt(gate: Control, metered: bool) -> float:
        text = prompt_of(1)
        prompt = Prompt("r1", text, ({"role": "user", "content": text},))  # as a row makes it
        started = time.process_time()
        for _ in range(n):
            token = await (gate.enter_for(prompt) if metered else gate.enter())
            gate.finished(token, 0.0, "answered", None, None, usage=(20, 9))
        return (time.process_time() - started) / n * 1e6

    async def best() -> float:
        extra = []
        for _ in range(3):
            plain = await per_attempt(control(None), False)
            meter = Meter(params={}, budget=Budget(1e9, Price(0.15, 0.6)), pacer=TokenPacer(1e12))
            extra.append(await per_attempt(control(meter), True) - plain)
        return min(extra)

    return asyncio.run(best())


def _wall(runs: list[Run], rows: int) -> str:
    wall = median([r.wall for r in runs])
    return f"{wall:.2f} s, {rows / wall:,.0f} rows/s" + spread([r.wall for r in runs])


def _per_row(runs: list[Run], rows: int) -> str:
    per_row = median([r.cpu for r in runs]) / rows
    return f"{per_row * 1e6:.1f} us ({per_row * 1000:.3f} s per 1,000 rows)" + spread(
        [r.cpu / rows * 1e6 for r in runs], "{:.1f}"
    )


def profile_batchpizza(input_path: Path, server: Server, rows: int, top: int = 10) -> str:
    """One more batchpizza run of the overhead scenario, under cProfile (not measured: the
    profiler slows every call): its top functions by self time, as a Markdown table."""
    import pstats

    stats_path = WORK / "overhead.prof"
    output = fresh(WORK / "overhead-profile.jsonl")
    args = batchpizza_args(input_path, output, server, concurrency=OVERHEAD_CONCURRENCY)
    args[1:1] = ["-m", "cProfile", "-o", str(stats_path)]  # python -m cProfile -o F -m batchpizza
    server.reset()
    expect(measure(args, server), 0, "batchpizza under cProfile")
    stats = pstats.Stats(str(stats_path))
    total = sum(entry[2] for entry in stats.stats.values())
    ranked = sorted(stats.stats.items(), key=lambda item: -item[1][2])
    lines = [
        f"### profile: batchpizza, overhead scenario ({rows:,} rows), top {top} by self time",
        "",
        "cProfile, one run; its overhead inflates functions called often, so read shares, not "
        "seconds.",
        "",
        "| function | self s | share | calls | per call us |",
        "|---|---|---|---|---|",
    ]
    for (path, line, name), (_, calls, self_s, _, _) in ranked[:top]:
        where = f"{_short(path)}:{line}({name})" if line else name
        lines.append(
            f"| `{where}` | {self_s:.3f} | {self_s / total:.1%} | {calls:,} | "
            f"{self_s / calls * 1e6 if calls else 0:.2f} |"
        )
    return "\n".join(lines)


def _short(path: str) -> str:
    """site-packages/aiohttp/client.py -> aiohttp/client.py; the standard library's by name."""
    parts = Path(path).parts
    for anchor in ("site-packages", "batchpizza"):
        if anchor in parts:
            at = parts.index(anchor) + (1 if anchor == "site-packages" else 0)
            return "/".join(parts[at:])
    return "/".join(parts[-2:])


def sending_rate(stats: dict[str, Any]) -> float:
    """Requests over the span from first arrival to the last reply's due time (see the top)."""
    n, mean_rate = stats["requests"], stats["mean_rate"]
    span = (n - 1) / mean_rate if mean_rate else 0.0
    return float(n / (span + LATENCY_MS / 1000))


def latency(bench: Bench) -> list[Figure]:
    rows = bench.sizes.latency
    server = bench.server(LATENCY_MS, JITTER_MS)
    ours, bare, ours_stats, bare_stats = bench.alternate(
        prompts_file(rows), server, LATENCY_CONCURRENCY, rows, "latency"
    )
    bound = LATENCY_CONCURRENCY / (LATENCY_MS / 1000)
    ours_rate = median([sending_rate(s) for s in ours_stats])
    bare_rate = median([sending_rate(s) for s in bare_stats])
    s = "latency"
    return [
        Figure(
            s,
            f"sending rate, batchpizza ({rows:,} rows)",
            f"{ours_rate:,.0f}/s = {ours_rate / bound:.1%} of {bound:,.0f}/s",
            ">= 95%",
            bench.sized(ours_rate / bound >= 0.95),
        ),
        Figure(s, "sending rate, bare loop", f"{bare_rate:,.0f}/s = {bare_rate / bound:.1%}"),
        Figure(
            s,
            "peak in flight at the server, batchpizza / bare loop",
            f"{max(x['peak_in_flight'] for x in ours_stats)} / {max(x['peak_in_flight'] for x in bare_stats)}",
        ),
        Figure(
            s,
            "wall time, batchpizza / bare loop (start to exit)",
            f"{median([r.wall for r in ours]):.2f} / {median([r.wall for r in bare]):.2f} s",
        ),
    ]


def pacing(bench: Bench) -> list[Figure]:
    rows = PACING_RATE * bench.sizes.pacing_seconds
    server = bench.server()
    output = fresh(WORK / "pacing.jsonl")
    args = batchpizza_args(
        prompts_file(rows), output, server, concurrency=OVERHEAD_CONCURRENCY, rate=str(PACING_RATE)
    )
    server.reset()
    run = measure(args, server)
    expect(run, 0, "batchpizza")
    stats = server.stats()
    rate, most = stats["mean_rate"], stats["max_in_window_1s"]
    note(f"  pacing: {stats['requests']} requests, {rate:.2f}/s, at most {most} in 1 s")
    off = (rate - PACING_RATE) / PACING_RATE
    s = "pacing"
    return [
        Figure(
            s,
            f"achieved rate at --rate {PACING_RATE} ({rows:,} rows, {run.wall:.1f} s)",
            f"{rate:.2f}/s ({off:+.2%})",
            "within 2%",
            abs(off) <= 0.02,
        ),
        Figure(
            s,
            "most requests in any 1-s window, at the server",
            str(most),
            f"<= {PACING_RATE}",
            most <= PACING_RATE,
        ),
    ]


def memory(bench: Bench) -> list[Figure]:
    """Peak RSS of whole sending runs to a Parquet output (what the README's first command
    writes, and the heavier of the two: pyarrow is in the process)."""
    server = bench.server()
    runs: list[tuple[int, Run]] = []
    for rows in bench.sizes.memory:
        output = fresh(WORK / f"memory-{rows}.parquet")
        args = batchpizza_args(prompts_file(rows), output, server, concurrency=OVERHEAD_CONCURRENCY)
        server.reset()
        run = measure(args, server, parts=True)
        expect(run, 0, "batchpizza")
        fresh(output)  # large, and not needed again
        note(f"  memory {rows:,} rows: {run.rss_mb:.0f} MiB peak, {run.wall:.1f} s")
        runs.append((rows, run))
    server.reset()  # let the server forget a million answers
    (small, small_run), (large, large_run) = runs
    ratio = large_run.rss_mb / small_run.rss_mb
    # The floor under every Parquet run's peak, which no change to batchpizza moves.
    floor = measure([sys.executable, "-c", "import pyarrow.parquet"], server).rss_mb
    bench.memory_peak = large_run.rss_mb
    s = "memory"
    return [
        Figure(s, f"peak RSS at {small:,} rows (Parquet output)", f"{small_run.rss_mb:.0f} MiB"),
        Figure(
            s,
            f"peak RSS at {large:,} rows (Parquet output)",
            f"{large_run.rss_mb:.0f} MiB",
            f"<= {MEMORY_TARGET_MIB:.0f} MiB",
            bench.sized(large_run.rss_mb <= MEMORY_TARGET_MIB),
        ),
        Figure(
            s,
            f"most anonymous / file-backed memory at {large:,} rows",
            f"{large_run.anon_mb:.0f} / {large_run.file_mb:.0f} MiB (file-backed: shared "
            f"libraries' mapped pages; `import pyarrow.parquet` alone: {floor:.0f} MiB peak RSS)",
        ),
        Figure(
            s,
            f"peak RSS ratio {large:,} / {small:,} rows",
            f"{ratio:.2f}x",
            f"<= {FLAT_TARGET}x",
            ratio <= FLAT_TARGET,
        ),
        Figure(
            s,
            f"throughput at {large:,} rows",
            f"{large / large_run.wall:,.0f} rows/s "
            f"({large_run.wall:.1f} s, {large_run.cpu / large * 1000:.3f} CPU s per 1,000)",
        ),
    ]


def resume_runs(bench: Bench, rows: int) -> tuple[dict[str, Run], int, int]:
    """Twice from the same 99.9% checkpoint: first as if the input were new to batchpizza (no
    scan kept from an earlier run: it validates everything again), then as a rerun of the same
    command after a kill (the scan kept by the first is reused while the input is unchanged).
    Also the checkpoint's size in bytes after the first run (answers and the scan), and how
    many rows were sent."""
    server = bench.server()
    input_path = prompts_file(rows)
    pristine, missing = resume_checkpoint(rows)
    output = fresh(WORK / "resume.jsonl")
    runs: dict[str, Run] = {}
    size = 0
    for kind in ("cold", "rerun"):
        if kind == "cold":
            restore_checkpoint(pristine, output)
        else:
            size = sum(
                output.with_name(output.name + suffix).stat().st_size
                for suffix in CHECKPOINT_FILES
                if output.with_name(output.name + suffix).exists()
            )
            # As a kill leaves it: the scan the cold run kept in the checkpoint, and the same rows
            # still to send (their answers taken back out of the results).
            forget_answers(output, range(rows - missing, rows))
        server.reset()
        args = batchpizza_args(input_path, output, server, concurrency=OVERHEAD_CONCURRENCY)
        run = runs[kind] = measure(args, server, watch_first=True)
        expect(run, 0, "batchpizza")
        sent = server.stats()["requests"]
        if sent != missing:
            raise RuntimeError(f"resume sent {sent} requests; {missing} rows were missing")
        if run.first_request is None:
            raise RuntimeError("the resumed run ended before its first request was seen")
        note(
            f"  resume {rows:,} {kind}: first request after {run.first_request:.2f} s, "
            f"{run.wall:.2f} s in all, {run.rss_mb:.0f} MiB"
        )
    fresh(output)
    return runs, size, missing


def resume(bench: Bench) -> list[Figure]:
    rows = bench.sizes.resume
    runs, _, missing = resume_runs(bench, rows)
    cold, rerun = runs["cold"], runs["rerun"]
    bench.resume_peak = max(cold.rss_mb, rerun.rss_mb)
    assert cold.first_request is not None and rerun.first_request is not None
    s = "resume"
    return [
        Figure(
            s,
            f"start to first request, rerun after a kill ({rows:,} rows, {missing:,} to send)",
            f"{rerun.first_request:.2f} s" + bench.per_million(rerun.first_request, rows),
            "< 5 s",
            bench.sized(rerun.first_request < 5),
        ),
        Figure(
            s,
            "start to first request, no scan kept (input new to batchpizza, or changed)",
            f"{cold.first_request:.2f} s" + bench.per_million(cold.first_request, rows),
        ),
        Figure(
            s,
            "whole resumed run (start to exit), peak RSS: rerun / no scan kept",
            f"{rerun.wall:.2f} s, {rerun.rss_mb:.0f} MiB / {cold.wall:.2f} s, {cold.rss_mb:.0f} MiB",
        ),
    ]


def scale(bench: Bench) -> list[Figure]:
    """10,000,000 generated rows (prompts of about 80 bytes): validation of the whole input (the
    validation scenario's broken last line), and the resume scenario's two runs, which scan,
    plan, send the last 0.1 % and write the whole output. Their peak RSS is set against the
    same runs at 1,000,000 rows (the resume scenario, run first if it was not asked for)."""
    rows = bench.sizes.scale
    server = bench.server()
    output = fresh(WORK / "scale-validation.jsonl")
    server.reset()
    checked = measure(
        batchpizza_args(broken_last_file(rows), output, server, concurrency=OVERHEAD_CONCURRENCY),
        server,
    )
    expect(checked, 2, "batchpizza on a broken input")
    note(
        f"  scale validation: {checked.wall:.1f} s ({checked.cpu:.1f} s CPU) for {rows:,} rows, "
        f"{checked.rss_mb:.0f} MiB"
    )
    runs, size, missing = resume_runs(bench, rows)
    cold, rerun = runs["cold"], runs["rerun"]
    assert rerun.first_request is not None and cold.first_request is not None
    peak = max(cold.rss_mb, rerun.rss_mb)
    if bench.resume_peak is None:
        resume(bench)
    assert bench.resume_peak is not None
    ratio = peak / bench.resume_peak
    s = f"scale ({rows:,} rows)"
    return [
        Figure(
            s,
            "validation of every row (exit 2 on the last): wall (CPU), peak RSS",
            f"{checked.wall:.1f} s ({checked.cpu:.1f} s CPU), {checked.rss_mb:.0f} MiB",
            f"< {SCALE_VALIDATION_TARGET:.0f} s",
            bench.sized(checked.wall < SCALE_VALIDATION_TARGET),
        ),
        Figure(
            s,
            f"start to first request, rerun after a kill ({missing:,} to send)",
            f"{rerun.first_request:.2f} s",
            f"< {SCALE_RESUME_TARGET:.0f} s",
            bench.sized(rerun.first_request < SCALE_RESUME_TARGET),
        ),
        Figure(
            s,
            "start to first request, no scan kept (everything validated again)",
            f"{cold.first_request:.1f} s",
        ),
        Figure(
            s,
            "whole resumed run (scan, plan, send, write every row): rerun / no scan kept",
            f"{rerun.wall:.1f} s, {rerun.rss_mb:.0f} MiB / {cold.wall:.1f} s, {cold.rss_mb:.0f} MiB",
        ),
        Figure(
            s,
            f"peak RSS of those runs over the same runs at {bench.sizes.resume:,} rows",
            f"{peak:.0f} / {bench.resume_peak:.0f} MiB = {ratio:.2f}x",
            f"<= {FLAT_TARGET}x",
            ratio <= FLAT_TARGET,
        ),
        Figure(
            s,
            "checkpoint size (answers, the kept scan and to-do set)",
            f"{size / 2**20:,.0f} MiB, {size / rows:.0f} bytes a row",
        ),
    ]


def api(bench: Bench) -> list[Figure]:
    rows = bench.sizes.api
    server = bench.server()
    source = prompts_file(rows)
    input_path = WORK / f"{source.stem}.parquet"
    if not input_path.exists():
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        pq.write_table(pj.read_json(source), input_path)
    script = str(Path(__file__).resolve())
    runs: dict[str, list[Run]] = {"answer": [], "run": []}
    for i in range(bench.repeat):
        for kind in turns(i, ("answer", "run")):
            output = fresh(WORK / f"api-{kind}.parquet")
            args = [sys.executable, script, "--api", kind, str(input_path), str(output)]
            args += [server.url, str(OVERHEAD_CONCURRENCY)]
            server.reset()
            run = measure(args, server)
            expect(run, 0, f"api {kind}")
            if (sent := server.stats()["requests"]) != rows:
                raise RuntimeError(f"api {kind} sent {sent} requests for {rows} rows")
            runs[kind].append(run)
            note(
                f"  api {i + 1}/{bench.repeat} {kind:<6} {run.wall:7.2f} s wall {run.cpu:7.2f} s cpu"
            )
    mem, file = runs["answer"], runs["run"]
    cpu_ratios = [a.cpu / b.cpu for a, b in zip(mem, file, strict=True)]
    cpu_ratio = median(cpu_ratios)
    s = "api"
    return [
        Figure(
            s,
            f"CPU time, answer(DataFrame) / run(file) ({rows:,} rows, paired)",
            f"{cpu_ratio:.3f}x" + spread(cpu_ratios, "{:.3f}"),
            f"<= {API_TARGET:.2f}x",
            bench.sized(cpu_ratio <= API_TARGET),
        ),
        Figure(s, "wall time, answer()", _wall(mem, rows)),
        Figure(s, "wall time, run()", _wall(file, rows)),
        Figure(
            s,
            "peak RSS, answer() / run()",
            f"{median([r.rss_mb for r in mem]):.0f} / {median([r.rss_mb for r in file]):.0f} MB",
        ),
    ]


def startup(bench: Bench) -> list[Figure]:
    """Start-up as a user meets it: `--version`, `--help` and `status` (they send nothing), a
    one-row run to JSONL and to Parquet, against `python -c pass`; each the median of
    max(repeat, 5) runs, interleaved. Then a one-row Parquet run with its steps timed inside."""
    server = bench.server()
    one_row = prompts_file(1)
    jsonl_out, parquet_out = WORK / "startup.jsonl", WORK / "startup.parquet"
    python = [sys.executable]
    commands: dict[str, list[str]] = {
        "python -c pass (the interpreter alone)": [*python, "-c", "pass"],
        "batchpizza --version": [*python, "-m", "batchpizza", "--version"],
        "batchpizza --help": [*python, "-m", "batchpizza", "--help"],
        "batchpizza status OUTPUT": [*python, "-m", "batchpizza", "status", str(jsonl_out)],
        "one-row run, JSONL output": batchpizza_args(
            one_row, jsonl_out, server, concurrency=OVERHEAD_CONCURRENCY
        ),
        "one-row run, Parquet output": batchpizza_args(
            one_row, parquet_out, server, concurrency=OVERHEAD_CONCURRENCY
        ),
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, list[float]] = {name: [] for name in commands}
    fresh(jsonl_out)
    expect(measure(commands["one-row run, JSONL output"], server), 0, "a one-row run")
    for _ in range(max(bench.repeat, 5)):
        for name, args in commands.items():
            if name.startswith("one-row"):
                fresh(jsonl_out if "JSONL" in name else parquet_out)
            run = measure(args, server)
            expect(run, 0, name)
            walls[name].append(run.wall)
            peaks[name].append(run.rss_mb)
    s = "start-up"
    figures = []
    for name in commands:
        wall = median(walls[name])
        target, met = "", None
        if name.startswith("batchpizza"):
            target, met = f"< {COMMAND_TARGET} s", wall < COMMAND_TARGET
        elif name.startswith("one-row"):
            target, met = f"< {ONE_ROW_TARGET} s", wall < ONE_ROW_TARGET
        figures.append(
            Figure(
                s,
                f"{name}: wall, peak RSS",
                f"{wall:.3f} s"
                + spread(walls[name], "{:.3f}")
                + f", {median(peaks[name]):.0f} MiB",
                target,
                met,
            )
        )
    figures += one_row_steps(bench, server, one_row, parquet_out)
    return figures


def one_row_steps(bench: Bench, server: Server, one_row: Path, output: Path) -> list[Figure]:
    """A one-row Parquet run through benchmarks/steps.py, which times each step inside; the
    interpreter's start-up and exit are what the wall clock around the process adds to it."""
    script = str(Path(__file__).resolve().parent / "steps.py")
    timings_path = WORK / "steps.json"
    argv = batchpizza_args(one_row, output, server, concurrency=OVERHEAD_CONCURRENCY)[3:]
    steps: dict[str, list[float]] = {}
    walls = []
    env = child_env()
    for _ in range(max(bench.repeat, 5)):
        fresh(output)
        started = time.time()
        done = subprocess.run(
            [sys.executable, script, str(timings_path), *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=ROOT,
            env=env,
            preexec_fn=pin_child,  # safe: this process runs no threads of its own
            check=False,
        )
        ended = time.time()
        if done.returncode != 0:
            raise RuntimeError(f"steps.py exited {done.returncode}: {done.stderr[-2000:]!r}")
        timings = json.loads(timings_path.read_text(encoding="utf-8"))
        reached, finished = timings.pop("reached"), timings.pop("finished")
        timings = {
            "interpreter start-up (to the first line of steps.py)": reached - started,
            **timings,
            "interpreter exit (after the command returned)": ended - finished,
        }
        walls.append(ended - started)
        for name, seconds in timings.items():
            steps.setdefault(name, []).append(seconds)
    s = "start-up steps"
    figures = [
        Figure(
            s,
            f"one-row Parquet run: {name}",
            f"{median(v) * 1000:.0f} ms" + spread([x * 1000 for x in v], "{:.0f}"),
        )
        for name, v in steps.items()
    ]
    figures.append(Figure(s, "one-row Parquet run: whole process", f"{median(walls):.3f} s"))
    return figures


def validation(bench: Bench) -> list[Figure]:
    rows = bench.sizes.validation
    server = bench.server()
    output = fresh(WORK / "validation.jsonl")
    server.reset()
    run = measure(
        batchpizza_args(broken_last_file(rows), output, server, concurrency=OVERHEAD_CONCURRENCY),
        server,
    )
    expect(run, 2, "batchpizza on a broken input")
    if server.stats()["requests"] or output.exists():
        raise RuntimeError("batchpizza sent requests or wrote output for a broken input")
    startup = bench.startup()
    per_million = startup + max(0.0, run.wall - startup) * 1_000_000 / rows
    note(
        f"  validation: {run.wall:.2f} s ({run.cpu:.2f} s CPU) for {rows:,} rows; start-up alone "
        f"{startup:.2f} s"
    )
    s = "validation"
    return [
        Figure(
            s,
            f"seconds for a million rows ({rows:,} rows: {run.wall:.2f} s, exit 2)",
            f"{per_million:.2f} s" + ("" if rows == 1_000_000 else " (extrapolated)"),
            "< 10 s",
            per_million < 10,
        ),
        Figure(
            s,
            "of which interpreter start-up and imports (`python -m batchpizza --version`)",
            f"{startup:.2f} s",
        ),
        Figure(s, "peak RSS while validating", f"{run.rss_mb:.0f} MB"),
    ]


def schema(bench: Bench) -> list[Figure]:
    """The overhead scenario's job (Parquet output) with `--schema` (5 fields) against the same
    requests without it, alternating, on a mock that answers every schema-bound request with
    valid JSON (`--structured-valid 1`: no re-asks): the CPU ratio is what reading the schema,
    validating every answer and typing the `parsed` column cost. Also the in-process cost of
    one answer's check."""
    import timeit

    from batchpizza.structured import Structured

    rows = bench.sizes.overhead
    server = Server(0.0, 0.0, "--structured-valid", "1")
    pin_server(server)
    path = WORK / "schema5.json"
    path.write_text(json.dumps(SCHEMA5))
    input_path = prompts_file(rows)
    # The job without --schema sends the very same requests (each prompt with the instruction
    # and the schema already in it) and gets the very same answers, so that the server's work,
    # the bodies and the checkpoint are alike: what differs is the client's own cost of --schema.
    asked = WORK / f"prompts-instructed-{rows}.jsonl"
    structured = Structured(SCHEMA5)
    with input_path.open() as plain, asked.open("w") as out:
        for line in plain:
            row = json.loads(line)
            out.write(json.dumps({**row, "prompt": structured.instructed(row["prompt"])}) + "\n")
    runs: dict[str, list[Run]] = {"schema": [], "plain": []}
    try:
        for i in range(bench.repeat):
            for kind in turns(i, ("schema", "plain")):
                output = fresh(WORK / f"schema-{kind}.parquet")
                source = input_path if kind == "schema" else asked
                args = batchpizza_args(source, output, server, concurrency=OVERHEAD_CONCURRENCY)
                args += ["--schema", str(path)] if kind == "schema" else []
                server.reset()
                run = measure(args, server)
                expect(run, 0, f"batchpizza ({kind})")
                if (sent := server.stats()["requests"]) != rows:
                    raise RuntimeError(f"{kind} sent {sent} requests for {rows} rows")
                runs[kind].append(run)
                note(
                    f"  schema {i + 1}/{bench.repeat} {kind:<6} {run.wall:7.2f} s wall {run.cpu:7.2f} s cpu"
                )
    finally:
        server.close()
    ratios = [a.cpu / b.cpu for a, b in zip(runs["schema"], runs["plain"], strict=True)]
    ratio = median(ratios)
    answer = '{"label": "positive", "score": 0.5, "stars": 4, "tags": ["a", "b"], "reason": "ok"}'
    n = 20_000
    check_us = timeit.timeit(lambda: structured.check(answer), number=n) / n * 1e6
    output_us = _parsed_column_us(structured, answer, n)
    once_ms = _schema_start_ms(path)
    plain_us = median([r.cpu for r in runs["plain"]]) / rows * 1e6
    added_us = check_us + output_us + once_ms * 1000 / rows
    s = "schema"
    return [
        Figure(
            s,
            f"CPU time, --schema (5 fields) / none ({rows:,} rows, zero latency, paired)",
            f"{ratio:.3f}x" + spread(ratios, "{:.3f}"),
            f"<= {SCHEMA_TARGET:.2f}x",
            bench.sized(ratio <= SCHEMA_TARGET),
        ),
        Figure(s, "CPU per row, --schema", _per_row(runs["schema"], rows)),
        Figure(s, "CPU per row, no schema", _per_row(runs["plain"], rows)),
        Figure(s, "one answer found and validated (in process)", f"{check_us:.1f} us"),
        Figure(s, "one row's parsed column built at output (in process)", f"{output_us:.1f} us"),
        Figure(s, "schema read, checked and compiled, once (a fresh process)", f"{once_ms:.1f} ms"),
        Figure(
            s,
            f"--schema's own CPU per row at {rows:,} rows (the three above), of the plain job's",
            f"{added_us:.1f} us = {added_us / plain_us:.1%} of {plain_us:.0f} us",
            "< 5 %",
            bench.sized(added_us / plain_us < SCHEMA_TARGET - 1),
        ),
    ]


def _parsed_column_us(structured: Any, answer: str, n: int) -> float:
    """In process: the `parsed` column of `n` answered rows, per row (best of three)."""
    from batchpizza.records import OutputRow
    from batchpizza.structured.columns import ParsedColumns

    parsed = ParsedColumns(structured)
    rows = [
        OutputRow(str(i), answer, "stop", False, None, 1, 1.0, "m", None, None, None, None, b"")
        for i in range(n)
    ]
    best = min(timeit_once(lambda: parsed.arrays(rows)) for _ in range(3))
    return best / n * 1e6


def timeit_once(func: Callable[[], object]) -> float:
    started = time.process_time()
    func()
    return time.process_time() - started


def _schema_start_ms(path: Path) -> float:
    """CPU ms a fresh process spends making a run's schema ready (imports of the validator and
    the generated metaschema, the check, the schema's validator and its Arrow type)."""
    code = (
        "import time; t = time.process_time(); import pyarrow\n"
        "from batchpizza.structured.options import structured_of\n"
        "from batchpizza.structured.columns import ParsedColumns\n"
        "t = time.process_time()\n"
        f"s = structured_of({str(path)!r}, 2, False, {{}}); s.check('{{}}'); ParsedColumns(s)\n"
        "print((time.process_time() - t) * 1000)"
    )
    found = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=child_env(),
            check=True,
        )
        found.append(float(out.stdout.strip()))
    return median(found)


SCENARIOS: dict[str, Callable[[Bench], list[Figure]]] = {
    "startup": startup,
    "overhead": overhead,
    "controls": controls,
    "tokens": tokens,
    "identity": identity,
    "latency": latency,
    "pacing": pacing,
    "memory": memory,
    "resume": resume,
    "validation": validation,
    "api": api,
    "schema": schema,
    "scale": scale,
}


# -- report -----------------------------------------------------------------------------------------


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(figures: list[Figure]) -> str:
    lines = ["| scenario | figure | value | target | met? |", "|---|---|---|---|---|"]
    for f in figures:
        met = {True: "yes", False: "**NO**", None: ""}.get(f.met, f.met)  # type: ignore[arg-type]
        lines.append(f"| {f.scenario} | {f.figure} | {f.value} | {f.target} | {met} |")
    return "\n".join(lines)


def machine() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for name in LIBRARIES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- machine: {os.cpu_count()} cores ({usable} usable), {model}; load average {load}",
        f"- {platform.python_implementation()} {platform.python_version()} on {platform.platform()}",
        f"- {', '.join(versions)}",
        f"- commit {commit}",
    ]


def batchpizza_loop() -> str:
    """The event loop batchpizza runs on here (job.run_loop): uvloop's when it is installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio's event loop (uvloop not installed)"
    return "uvloop's event loop (a plain install's default)"


def record(text: str) -> None:
    header = (
        "# Benchmark results\n\n"
        "Appended by `python benchmarks/bench.py --record`, newest last. What each scenario "
        "measures is said at the top of bench.py.\n"
    )
    existing = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else header
    RESULTS.write_text(existing.rstrip("\n") + "\n\n" + text + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="extend",
        nargs="+",
        choices=list(SCENARIOS),
        help="scenarios to run (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (smoke run)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each side where two are compared"
    )
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="overhead: also one batchpizza run under cProfile; print its top 10 by self time",
    )
    parser.add_argument("--bare", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--api", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.api:
        kind, input_path, output, url, concurrency = args.api
        return api_main(kind, input_path, output, url, int(concurrency))
    if args.bare:
        input_path, output, endpoint, concurrency = args.bare
        return bare_main(input_path, output, endpoint, int(concurrency))
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    sys.path.insert(0, str(ROOT))  # a clean clone need not have batchpizza installed
    WORK.mkdir(parents=True, exist_ok=True)
    # Byte-compiled first, as an installed copy is: with PYTHONDONTWRITEBYTECODE set (as on the
    # machines this was measured on) every run would otherwise compile the package again, some
    # 50 ms of each batchpizza run that no installed copy pays.
    compileall.compile_dir(ROOT / "batchpizza", quiet=1)
    # The 10,000,000-row scenario takes about ten minutes and 7 GB of disk: only when asked for.
    names = [n for n in SCENARIOS if n in (args.scenario or [n for n in SCENARIOS if n != "scale"])]
    command = shlex.join(["python", "benchmarks/bench.py", *sys.argv[1:]])
    started = dt.datetime.now(dt.timezone.utc)
    about = machine()  # before the runs, so the load average says what else was running
    bench = Bench(QUICK if args.quick else FULL, args.quick, args.repeat, profile=args.profile)
    figures: list[Figure] = []
    try:
        for name in names:
            note(f"== {name}")
            figures += SCENARIOS[name](bench)
    finally:
        bench.close()
    elapsed = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    size = "quick (--quick: sizes shrunk, see bench.py)" if args.quick else "full"
    report = "\n".join(
        [
            f"## {started:%Y-%m-%d %H:%M} UTC: {size}, {elapsed:.0f} s",
            "",
            f"- command: `{command}`",
            *about,
            "- each side in its own process (mock server, batchpizza, bare loop); asyncio's event "
            f"loop in the mock server; {batchpizza_loop()} in batchpizza and the bare loop unless "
            "a figure says asyncio (BATCHPIZZA_LOOP=asyncio); child pinned to core "
            f"{CHILD_CORE}, mock server to core {SERVER_CORE}",
            "",
            table(figures),
            *(f"\n{profile}" for profile in bench.profiles),
        ]
    )
    print(report)
    if args.record:
        record(report)
        note(f"appended to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
