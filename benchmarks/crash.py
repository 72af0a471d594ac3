"""kill -9 at random moments into a full-size run, then a rerun: issue 4's acceptance criterion.

    python benchmarks/crash.py                       # 3,000 rows, 6 kills, concurrency 32
    python benchmarks/crash.py --seed 2 --rows 5000 --kills 8

"Six SIGKILLs at random moments into a 3,000-row run at concurrency 32, then a final rerun: every
row exactly once and right; at most 32 answers re-sent per kill; rerunning the finished job sends 0
requests."

The mock server runs in its own process (`python -m batchpizza mock-server --port 0 --latency 30
--jitter 15`), so batchpizza and the server share neither an event loop nor a GIL; its counters,
including how many times it answered each question, come from GET /__stats. Each killed run is
`python -m batchpizza run IN -o OUT.parquet --base-url URL --rate 0 --concurrency C -q
--no-progress`. It is killed once it has committed its first row (so requests are in flight)
plus a seeded random delay, uniform between 0 and 80% of the time the rows still to send would
take at 30 ms a request and C at a time; the kill is thus spread over the whole run, and never
lands after the run's end unless the machine is much faster than the mock's latency allows.

For every killed run it checks that the kill came while rows were still to do, that no committed
row was lost, that it sent no row the checkpoint already held, and counts the answers the server
gave that the checkpoint does not hold ("lost": thrown away by the kill) and the requests sent
whose row was not committed ("unsaved": the lost ones plus those the kill cut short, which the
mock server cancels unanswered but a real server might answer); both must be at most C (there
are no faults, hence no retries, so every request is one row in flight). Then a final run to
completion (exit 0) and a rerun of the finished job (exit 0, 0 requests, the same output). The
output must hold every input id once, in input order, each answered with the mock's answer;
answers given more than once for a question (the re-sends, sum of n - 1) must be at most C per
kill. Exit status 0 if every check passes, else 1.
Inputs and outputs live in benchmarks/work/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from mockproc import Server, child_env

from batchpizza.checkpoint.reading import read_only
from batchpizza.errors import BatchpizzaError
from batchpizza.mock.replies import mock_answer

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"
LATENCY_MS = 30.0
JITTER_MS = 15.0
WORDS = ("basil", "mozzarella", "anchovies", "capers", "truffle", "nduja", "pineapple", "figs")
RUN_TIMEOUT = 120.0


def make_input(path: Path, n: int) -> list[dict[str, Any]]:
    rng = random.Random(4)
    rows = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))
        rows.append({"id": f"row-{i:05d}", "prompt": f"crash question {i}: {words}?", "n": i})
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def committed(ck: Path) -> set[str]:
    """Ids of the answered rows in the checkpoint (read-only); empty while there is none."""
    if not ck.exists():
        return set()
    try:
        conn = read_only(ck)  # the results a run has staged and not folded yet included
    except (sqlite3.Error, BatchpizzaError):
        return set()
    try:
        rows = conn.execute("SELECT id FROM results WHERE finish_reason = 'stop'")
        return {row[0] for row in rows}
    except sqlite3.Error:
        return set()  # the table is not created yet
    finally:
        conn.close()


def committed_count(ck: Path) -> int:
    if not ck.exists():
        return 0
    try:
        conn = read_only(ck)  # the results a run has staged and not folded yet included
    except (sqlite3.Error, BatchpizzaError):
        return 0
    try:
        query = "SELECT count(*) FROM results WHERE finish_reason = 'stop'"
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def resent(answers: dict[str, int]) -> int:
    """Answers given to a question that had been answered before."""
    return sum(max(0, n - 1) for n in answers.values())


@dataclass
class RunRecord:
    label: str
    code: int
    wall: float
    before: int  # answered rows in the checkpoint when the run started
    after: int  # ... when it ended
    served: int  # answers the server gave during the run
    duplicates: int  # of which to questions answered before (re-sends)
    requests: int
    delay: float | None = None  # seconds after the first commit seen that the kill came
    thrown_away: int = 0  # answers served in this run that the checkpoint does not hold
    uncommitted: int = 0  # requests sent in this run whose row was not committed (no retries here)
    problems: list[str] = field(default_factory=list)


class Job:
    def __init__(self, server: Server, inp: Path, out: Path, concurrency: int) -> None:
        self.server = server
        self.out = out
        self.ck = Path(f"{out}.checkpoint")
        self.args = [
            sys.executable,
            "-m",
            "batchpizza",
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            server.url,
            "--rate",
            "0",
            "--concurrency",
            str(concurrency),
            "-q",
            "--no-progress",
        ]
        self.runs = 0

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.runs += 1
        err = WORK / f"crash-run-{self.runs}.stderr"
        with err.open("wb") as handle:
            proc = subprocess.Popen(
                self.args,
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=handle,
            )
        return proc, err


def wait_for(proc: subprocess.Popen[bytes], ck: Path, floor: int, timeout: float) -> bool:
    """Bounded polling until the checkpoint holds more than `floor` answered rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if committed_count(ck) > floor:
            return True
        time.sleep(0.005)
    return False


def killed_run(job: Job, rng: random.Random, rows: int, concurrency: int, index: int) -> RunRecord:
    before_ids = committed(job.ck)
    stats0 = job.server.drained()
    proc, err = job.start()
    started = time.monotonic()
    problems: list[str] = []
    delay: float | None = None
    try:
        if wait_for(proc, job.ck, len(before_ids), RUN_TIMEOUT):
            remaining = rows - committed_count(job.ck)
            expected = remaining * LATENCY_MS / 1000 / concurrency
            delay = rng.uniform(0.0, 0.8 * expected)
            time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - started
    stats1 = job.server.drained()
    after_ids = committed(job.ck)
    if code != -signal.SIGKILL:
        tail = err.read_text(errors="replace")[-2000:].strip()
        problems.append(f"kill {index}: the run ended by itself (exit {code}) before the kill")
        if tail:
            problems.append(f"kill {index}: its stderr: {tail}")
    elif len(after_ids) == rows:
        problems.append(f"kill {index}: came after every row was committed, none in flight")
    elif job.out.exists():
        problems.append(f"kill {index}: an output file exists though rows are missing")
    return record(
        f"kill {index}", code, wall, before_ids, after_ids, stats0, stats1, delay, problems
    )


def record(
    label: str,
    code: int,
    wall: float,
    before_ids: set[str],
    after_ids: set[str],
    stats0: dict[str, Any],
    stats1: dict[str, Any],
    delay: float | None,
    problems: list[str],
) -> RunRecord:
    a0: dict[str, int] = stats0["answers"]
    a1: dict[str, int] = stats1["answers"]
    served = sum(a1.values()) - sum(a0.values())
    lost = before_ids - after_ids
    if lost:
        problems.append(f"{label}: {len(lost)} committed rows lost, e.g. {sorted(lost)[:3]}")
    run = RunRecord(
        label=label,
        code=code,
        wall=wall,
        before=len(before_ids),
        after=len(after_ids),
        served=served,
        duplicates=resent(a1) - resent(a0),
        requests=stats1["requests"] - stats0["requests"],
        delay=delay,
        thrown_away=served - len(after_ids - before_ids),
        uncommitted=stats1["requests"] - stats0["requests"] - len(after_ids - before_ids),
        problems=problems,
    )
    again = {q: n - a0.get(q, 0) for q, n in a1.items() if n > a0.get(q, 0)}
    run.problems.extend(resent_committed(label, again, before_ids))
    return run


PROMPT_OF: dict[str, str] = {}  # id -> prompt, filled in main


def resent_committed(label: str, sent: dict[str, int], held: set[str]) -> list[str]:
    """A run must not send a row the checkpoint held when it started."""
    id_of = {p: i for i, p in PROMPT_OF.items()}
    bad = sorted(id_of[q] for q in sent if id_of.get(q) in held)
    if bad:
        return [f"{label}: re-sent {len(bad)} rows already in the checkpoint, e.g. {bad[:3]}"]
    return []


def final_run(job: Job, label: str) -> tuple[RunRecord, str]:
    before_ids = committed(job.ck)
    stats0 = job.server.drained()
    proc, err = job.start()
    started = time.monotonic()
    try:
        code = proc.wait(RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - started
    stats1 = job.server.drained()
    stderr = err.read_text(errors="replace")
    problems = []
    if code != 0:
        problems.append(f"{label}: exit {code}, expected 0: {stderr[-2000:]}")
    if "Traceback" in stderr:
        problems.append(f"{label}: a traceback on stderr: {stderr[-2000:]}")
    after_ids = committed(job.ck)
    return record(label, code, wall, before_ids, after_ids, stats0, stats1, None, problems), stderr


def check_output(out: Path, rows: list[dict[str, Any]]) -> list[str]:
    if not out.exists():
        return [f"no output at {out}"]
    written = pq.read_table(out).to_pylist()
    problems = []
    ids = [r["id"] for r in written]
    expected = [r["id"] for r in rows]
    if ids != expected:
        extra = len(ids) - len(set(ids))
        missing = len(set(expected) - set(ids))
        problems.append(
            f"output ids differ from the input's: {len(ids)} rows for {len(expected)}, "
            f"{extra} duplicated, {missing} missing"
        )
    wrong = [
        r["id"]
        for r, line in zip(rows, written, strict=False)
        if line.get("finish_reason") != "stop"
        or line.get("answer") != mock_answer(r["prompt"])
        or line.get("n") != r["n"]
        or line.get("error") is not None
    ]
    if wrong:
        problems.append(
            f"{len(wrong)} rows wrong (answer, finish_reason, carried n), e.g. {wrong[:3]}"
        )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args(argv)
    rng = random.Random(opts.seed)
    WORK.mkdir(parents=True, exist_ok=True)

    inp = WORK / f"crash-{opts.rows}.jsonl"
    rows = make_input(inp, opts.rows)
    PROMPT_OF.update({r["id"]: r["prompt"] for r in rows})
    out = WORK / f"crash-{opts.rows}.parquet"
    for stale in WORK.glob(f"{out.name}*"):  # output, checkpoint, its WAL, lock and scan
        stale.unlink()

    print(
        f"crash: {opts.rows} rows, {opts.kills} SIGKILLs, concurrency {opts.concurrency}, "
        f"seed {opts.seed}, mock latency {LATENCY_MS:g} +- {JITTER_MS:g} ms (own process)"
    )
    started = time.monotonic()
    server = Server(LATENCY_MS, JITTER_MS)
    try:
        server.reset()
        job = Job(server, inp, out, opts.concurrency)
        runs = [killed_run(job, rng, opts.rows, opts.concurrency, k + 1) for k in range(opts.kills)]
        final, _ = final_run(job, "final")
        runs.append(final)
        written = out.read_bytes() if out.exists() else b""
        again, _ = final_run(job, "rerun")
        runs.append(again)
        stats = server.drained()
    finally:
        server.close()
    took = time.monotonic() - started

    problems = [p for run in runs for p in run.problems]
    problems += check_output(out, rows)
    if out.exists() and out.read_bytes() != written:
        problems.append("the rerun of the finished job rewrote the output differently")
    answers: dict[str, int] = stats["answers"]
    unanswered = set(PROMPT_OF.values()) - set(answers)
    if unanswered:
        problems.append(f"{len(unanswered)} questions were never answered by the server")
    total_resent = resent(answers)
    kills = sum(
        1 for run in runs[: opts.kills] if run.code == -signal.SIGKILL and run.after < len(rows)
    )
    bound = opts.concurrency
    per_kill = total_resent / kills if kills else 0.0
    if total_resent > bound * kills:
        problems.append(f"{total_resent} answers re-sent over {kills} kills, bound {bound * kills}")
    for run in runs[: opts.kills]:
        if run.thrown_away > bound:
            problems.append(f"{run.label}: {run.thrown_away} answers thrown away, bound {bound}")
        if run.uncommitted > bound:
            problems.append(f"{run.label}: {run.uncommitted} requests not committed, bound {bound}")
    for run in runs[opts.kills :]:
        if run.thrown_away:
            problems.append(f"{run.label}: {run.thrown_away} answers served but not committed")
    if again.requests != 0:
        problems.append(f"the rerun of the finished job sent {again.requests} requests, not 0")
    if kills < opts.kills:
        problems.append(f"only {kills} of {opts.kills} runs were killed with rows in flight")

    print()
    header = (
        f"{'run':<8} {'exit':>5} {'wall s':>7} {'kill at':>8} {'ck before':>9} {'ck after':>8} "
        f"{'requests':>8} {'answers':>7} {'re-sent':>7} {'lost':>5} {'unsaved':>7}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        at = f"+{run.delay:.2f}s" if run.delay is not None else "-"
        print(
            f"{run.label:<8} {run.code:>5} {run.wall:>7.2f} {at:>8} {run.before:>9} "
            f"{run.after:>8} {run.requests:>8} {run.served:>7} {run.duplicates:>7} "
            f"{run.thrown_away:>5} {run.uncommitted:>7}"
        )
    print()
    print("kill at: after the run's first commit; re-sent: answers to questions answered before;")
    print("lost: answers the server gave in that run that the checkpoint does not hold;")
    print("unsaved: requests of that run whose row was not committed (lost + those the kill cut")
    print("short, which the mock server cancels unanswered but a real one might answer).")
    print()
    killed = runs[: opts.kills]
    summary = [
        ("rows in output / input", f"{final.after} committed, output checked against {len(rows)}"),
        ("server requests in all", f"{stats['requests']}"),
        ("answers re-sent in all", f"{total_resent} over {kills} kills"),
        ("re-sent per kill", f"{per_kill:.1f} (bound {bound})"),
        ("most lost by one kill", f"{max((r.thrown_away for r in killed), default=0)}"),
        ("most unsaved by one kill", f"{max((r.uncommitted for r in killed), default=0)}"),
        ("final run exit", f"{final.code}"),
        ("rerun exit / requests", f"{again.code} / {again.requests}"),
        ("took", f"{took:.1f} s"),
    ]
    for name, value in summary:
        print(f"  {name:<24} {value}")
    print()
    if problems:
        print(f"FAIL: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("PASS: every row once and right; re-sends within the bound; the rerun sent nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
