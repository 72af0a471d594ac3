"""`batchpizza run INPUT -o OUTPUT --ray`: the real command in a subprocess, as a user runs it.

What needs no cluster (refusals, the dry run, the summary's numbers) runs in the quick suite.
The rest runs on a local Ray cluster started once for the module (2 CPUs) against the mock
server in its own process; each command joins the cluster by its address, so that a test pays
for the actors' start, not for a cluster's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MockProcess, other_network_namespace, read_jsonl, write_jsonl

from batchpizza.checkpoint import RunLock
from batchpizza.distributed.command import output_format, user_error
from batchpizza.distributed.command import run as run_on_ray
from batchpizza.distributed.driver import RAY_ACTOR_ARGS_LINE
from batchpizza.distributed.parts import PartStore, key_of
from batchpizza.distributed.summary import summarize, tally_of
from batchpizza.distributed.worker import part_schema
from batchpizza.errors import InputError, Interrupted, UsageError
from batchpizza.fingerprint import fingerprint, identity_digest, text_digest
from batchpizza.identities import identity_of
from batchpizza.mock.replies import mock_answer
from batchpizza.records import Summary, Tally

# Ray's own deprecation notices are not ours.
pytestmark = pytest.mark.filterwarnings("ignore:::ray")
needs_ray = pytest.mark.ray  # deselected without the ray extra (conftest.py)
SUMMARY_KEYS = {
    *("rows", "answered", "failed", "misuse", "invalid", "requests", "retries", "elapsed_s"),
    *("output", "exit_code", "pending", "stopped", "rate"),
}
# A throwaway local cluster, as the README advises: no token to share between the processes.
RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


def prompts(folder: Path, n: int, parts: int = 4) -> Path:
    """A folder of `parts` Parquet files holding rows r0..r{n-1}, so every actor gets work."""
    folder.mkdir()
    table = pa.table(
        {"id": [f"r{i}" for i in range(n)], "prompt": [f"question {i}" for i in range(n)]}
    )
    step = -(-n // parts)
    for k, start in enumerate(range(0, n, step)):
        pq.write_table(table.slice(start, step), folder / f"part-{k}.parquet")
    return folder


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchpizza", "run", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **RAY_ENV, **(env or {})},
        check=False,
    )


def start(*args: str) -> subprocess.Popen[str]:
    """The command in a session of its own, so that a kill takes whatever it started along."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchpizza", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **RAY_ENV},
        start_new_session=True,
    )


def sigterm_once(process: subprocess.Popen[str], mock: Any, stat: str, at_least: int) -> str:
    """SIGTERM `process` once the mock's `stat` reaches `at_least`; its standard error. A run
    that ends first, or never gets there, fails the test (and is killed)."""
    try:
        deadline = time.monotonic() + 240
        while mock.stats()[stat] < at_least:
            assert process.poll() is None, "it finished before it was interrupted"
            assert time.monotonic() < deadline, "it never started sending"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return stderr


def parquet_rows(folder: Path) -> list[dict[str, Any]]:
    return pq.read_table(folder).to_pylist()


def aside(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


# -- without a cluster ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_refuses_openai_batch_format_and_stdin_in_a_sentence(tmp_path: Path) -> None:
    source = prompts(tmp_path / "in", 4, parts=1)
    for args, said in (
        ([str(source), "-o", str(tmp_path / "out"), "--format", "openai-batch"], "--format jsonl"),
        (["-", "-o", str(tmp_path / "out")], "not standard input"),
        (
            [
                str(source),
                "-o",
                str(tmp_path / "out"),
                "--checkpoint",
                str(tmp_path / "out" / "ck"),
            ],
            "inside the output",
        ),
    ):
        done = command(*args, "--ray")
        assert done.returncode == 2, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


@pytest.mark.slow
def test_the_command_line_imports_ray_only_when_a_run_needs_the_cluster() -> None:
    # A plain install has no Ray, and importing it costs seconds a run without --ray never pays.
    code = "import sys, batchpizza.cli, batchpizza.distributed.command; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ray_output_format_follows_the_option_then_the_name() -> None:
    assert output_format("s3://lake/answers/", None) == "parquet"
    assert output_format("answers.jsonl", None) == "jsonl"
    assert output_format("answers", "jsonl") == "jsonl"
    with pytest.raises(UsageError, match="does not match"):
        output_format("answers.parquet", "jsonl")


@pytest.mark.slow
@needs_ray
def test_ray_dry_run_counts_the_checkpoint_and_sends_nothing(
    tmp_path: Path, mock_process: Callable[..., MockProcess]
) -> None:
    mock = mock_process()
    source = prompts(tmp_path / "in", 60)
    out = tmp_path / "out"
    store = PartStore(str(tmp_path / "out.checkpoint"))  # an earlier run answered r0..r19
    row = {"answer": "a", "finish_reason": "stop", "misuse": False, "error": None}
    row |= {"attempts": 1, "latency_ms": 1.0, "model": "m"}
    answered = [{"id": f"r{i}", **row} for i in range(20)]
    store.seal(key_of(["r0"]), pa.Table.from_pylist(answered, schema=part_schema()))
    store.save_meta(learned_rate=20.0)  # ... and learned 20/s under --rate auto
    before = set(tmp_path.rglob("*"))
    common = [str(source), "-o", str(out), "--ray", "--dry-run", "--base-url", mock.url]

    done = command(*common, "--rate", "10")
    assert done.returncode == 0, done.stderr
    assert "rows        60" in done.stdout  # the plan goes to stdout, to be piped
    assert "answered    20" in done.stdout
    assert "to send     40" in done.stdout
    assert "about 0:00:04 at 10/s" in done.stdout

    learned = command(*common, "--rate", "auto:100")
    assert learned.returncode == 0, learned.stderr
    assert "at 20/s" in learned.stdout  # the run starts from it, so the estimate does too

    limited = command(*common, "--limit", "10", "--restart")
    assert limited.returncode == 0, limited.stderr
    assert "rows        10" in limited.stdout and "to send     10" in limited.stdout

    # (A JSON lines file without ids is run as without --ray: a row's position is its id.)
    no_ids = tmp_path / "no-ids.parquet"
    pq.write_table(pa.table({"prompt": ["hello"]}), no_ids)
    bad = command(str(no_ids), "-o", str(tmp_path / "other"), "--ray", "--dry-run")
    assert bad.returncode == 2 and "--id-field" in bad.stderr
    assert mock.stats()["requests"] == 0
    assert set(tmp_path.rglob("*")) == {*before, no_ids}


def kept_parts(checkpoint: Path, source: Path, ids: range, part: str = "r0") -> None:
    """Parts answering the rows `ids` of `source` (Parquet) as an earlier run kept them: each
    under its request's fingerprint, as the actors key it (in the part named by `part`)."""
    from batchpizza.config import RunConfig
    from batchpizza.engine.batch import Batch
    from batchpizza.providers.factory import make_provider
    from batchpizza.rows import Fields, fingerprint_key

    config = RunConfig.from_options("<ray>.parquet", "<ray>.parquet")
    provider = make_provider(config)
    objects = pq.read_table(source).to_pylist()
    batch = Batch(objects, Fields.from_config(config, ()), key=fingerprint_key(provider))
    row = {"finish_reason": "stop", "misuse": False, "error": None, "attempts": 1}
    row |= {"latency_ms": 1.0, "model": "m"}
    answered = [
        {"id": objects[i]["id"], "digest": batch.digests[i], "answer": f"kept {i}", **row}
        for i in ids
    ]
    store = PartStore(str(checkpoint))
    store.seal(key_of([part]), pa.Table.from_pylist(answered, schema=part_schema()))


def prompts_read(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The rows whose prompts the driver's counting reads (and fingerprints), as it runs."""
    from batchpizza.distributed import planning

    read: list[dict[str, Any]] = []
    batch = planning.Batch

    def reading(rows: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        read.extend(rows)
        return batch(rows, *args, **kwargs)

    monkeypatch.setattr(planning, "Batch", reading)
    return read


@needs_ray  # the command checks that Ray is installed; no cluster starts
def test_ray_interrupted_summary_counts_from_what_the_run_knows_not_every_prompt_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After Ctrl-C the driver read and fingerprinted every row of the input again to count the
    # answered ones (9.3 s at 1.5M rows); an id the run answered was answered for its prompt.
    from batchpizza.distributed import command as ray_command

    source = prompts(tmp_path / "in", 8, parts=2)
    checkpoint = tmp_path / "out.checkpoint"
    before = tmp_path / "before.parquet"  # r1's prompt has changed since
    pq.write_table(pa.table({"id": ["r0", "r1"], "prompt": ["question 0", "first 1"]}), before)
    kept_parts(checkpoint, before, range(2), part="before")

    def answered_then_interrupted(self: Any) -> None:
        kept_parts(checkpoint, source, range(2, 5), part="during")  # the actors' answers
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_command.ClusterRun, "_on_ray", answered_then_interrupted)
    read = prompts_read(monkeypatch)
    with pytest.raises(Interrupted) as stopped:
        ray_command.run(str(source), str(tmp_path / "out"), quiet=True)
    summary = stopped.value.summary
    assert isinstance(summary, Summary)
    assert (summary.rows, summary.answered, summary.pending) == (8, 4, 4)  # r0, r2..r4
    assert sorted(row["id"] for row in read) == ["r0", "r1"]  # only those answered before
    assert f"stopped; 4 answered rows saved in {checkpoint}. Rerun" in stopped.value.message


@needs_ray  # the command checks that Ray is installed; no cluster starts
def test_ray_first_run_interrupted_before_an_answer_says_none_was_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "answered rows are saved in out.checkpoint" when none was.
    from batchpizza.distributed import command as ray_command

    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "prompt": f"q {i}"} for i in range(5)])

    def interrupted(self: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_command.ClusterRun, "_on_ray", interrupted)
    read = prompts_read(monkeypatch)
    with pytest.raises(Interrupted) as stopped:
        ray_command.run(str(source), str(tmp_path / "out"), quiet=True)
    summary = stopped.value.summary
    assert isinstance(summary, Summary)
    assert (summary.rows, summary.answered, summary.pending) == (5, 0, 5)
    assert read == []  # the staging counted the rows; nothing was answered before
    assert "stopped; no row has an answer saved yet. Rerun the same command" in str(
        stopped.value.message
    )
    assert "saved in" not in stopped.value.message


@needs_ray
def test_ray_rerun_with_nothing_to_send_writes_the_output_without_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from batchpizza.distributed import command as ray_command

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init called")

    monkeypatch.setattr(ray, "init", no_cluster)
    source = prompts(tmp_path / "in", 10, parts=3)
    kept_parts(tmp_path / "out.checkpoint", source, range(10))
    out = tmp_path / "out"

    summary = ray_command.run(str(source), str(out), quiet=True, format="jsonl")

    assert (summary.rows, summary.answered, summary.requests, summary.exit_code) == (10, 10, 0, 0)
    rows = [row for part in sorted(out.glob("*.jsonl")) for row in read_jsonl(part)]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(10)]
    assert [r["prompt"] for r in rows] == [f"question {i}" for i in range(10)]
    assert [r["answer"] for r in rows] == [f"kept {i}" for i in range(10)]
    assert aside(out) == []
    checkpoint = str(tmp_path / "out.checkpoint")
    limited = ray_command.run(
        str(source), str(tmp_path / "five"), checkpoint=checkpoint, quiet=True, limit=5
    )
    assert (limited.rows, limited.answered) == (5, 5)
    assert [r["id"] for r in parquet_rows(tmp_path / "five")] == [f"r{i}" for i in range(5)]

    # A row whose prompt changed since, or one without its answer: the cluster is needed.
    changed = pq.read_table(source / "part-0.parquet").to_pylist()
    changed[0]["prompt"] = "question 0, asked otherwise"
    pq.write_table(pa.Table.from_pylist(changed), tmp_path / "changed.parquet")
    with pytest.raises(AssertionError, match=r"ray\.init called"):
        ray_command.run(
            str(tmp_path / "changed.parquet"), str(tmp_path / "other"), checkpoint=checkpoint,
            quiet=True,
        )  # fmt: skip
    (tmp_path / "out.checkpoint").rename(tmp_path / "nine.checkpoint")
    kept_parts(tmp_path / "nine.checkpoint", source, range(9))
    with pytest.raises(AssertionError, match=r"ray\.init called"):
        ray_command.run(
            str(source), str(tmp_path / "nine"), checkpoint=str(tmp_path / "nine.checkpoint"),
            quiet=True,
        )  # fmt: skip


@needs_ray
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_ray_output_has_the_id_as_text_first_as_without_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    # Ray Data passed the input's columns through: an int64 id, after the prompt, where the
    # output without --ray has the id as text, first.
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init called"))
    source = tmp_path / "in.parquet"
    ids = pa.array([3, 1, 2], pa.int64())
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "id": ids, "x": [1.5, None, 2.0]}), source)
    by_text = tmp_path / "by-text.parquet"  # the same rows with their ids as text, for the parts
    pq.write_table(pa.table({"id": ["3", "1", "2"], "prompt": ["a", "b", "c"]}), by_text)
    kept_parts(tmp_path / "out.checkpoint", by_text, range(3))
    out = tmp_path / "out"
    assert run_on_ray(str(source), str(out), quiet=True, format=fmt).exit_code == 0
    if fmt == "parquet":
        table = pq.read_table(out)
        assert table.schema.field("id").type == pa.string()
        rows = table.to_pylist()
    else:
        rows = [row for part in sorted(out.glob("*.jsonl")) for row in read_jsonl(part)]
    assert list(rows[0])[:4] == ["id", "prompt", "x", "answer"]
    assert [(r["id"], r["x"], r["answer"]) for r in rows] == [
        ("3", 1.5, "kept 0"),
        ("1", None, "kept 1"),
        ("2", 2.0, "kept 2"),
    ]


@pytest.mark.slow
@needs_ray
def test_ray_dry_run_counts_answers_by_request_so_a_new_model_shows_as_rows_to_send(
    tmp_path: Path, mock_process: Callable[..., MockProcess]
) -> None:
    mock = mock_process()
    source = prompts(tmp_path / "in", 30)
    out = tmp_path / "out"
    store = PartStore(str(tmp_path / "out.checkpoint"))  # r0..r9 answered with model-A
    ident = identity_digest(identity_of("openai", "model-A", {}))
    row = {"answer": "a", "finish_reason": "stop", "misuse": False, "error": None}
    row |= {"attempts": 1, "latency_ms": 1.0, "model": "model-A"}
    answered = [
        {"id": f"r{i}", "digest": fingerprint(ident, text_digest(f"question {i}")), **row}
        for i in range(10)
    ]
    store.seal(key_of(["r0"]), pa.Table.from_pylist(answered, schema=part_schema()))
    common = [str(source), "-o", str(out), "--ray", "--dry-run", "--base-url", f"{mock.url}/v1"]
    common += ["--provider", "openai", "--rate", "0"]

    same = command(*common, "--model", "model-A")
    assert same.returncode == 0, same.stderr
    assert "answered    10" in same.stdout and "to send     20" in same.stdout

    other = command(*common, "--model", "model-B")
    assert other.returncode == 0, other.stderr
    assert "answered    0" in other.stdout and "to send     30" in other.stdout

    warmer = command(*common, "--model", "model-A", "--param", "temperature=0.9")
    assert "to send     30" in warmer.stdout, warmer.stderr
    assert mock.stats()["requests"] == 0


@pytest.mark.slow
def test_ray_mock_goes_at_the_mock_rate_unless_rate_is_given(tmp_path: Path) -> None:
    # As without --ray: 20/s for the bundled mock, not the real service's polite 2/s.
    source = prompts(tmp_path / "in", 60)
    common = [str(source), "-o", str(tmp_path / "out"), "--ray", "--mock", "--dry-run"]
    mock_rate = command(*common)
    assert mock_rate.returncode == 0, mock_rate.stderr
    assert "at 20/s" in mock_rate.stdout
    given = command(*common, "--rate", "5")
    assert "at 5/s" in given.stdout, given.stderr


@needs_ray  # the driver's checks read the input with Ray Data
def test_ray_refuses_an_id_the_input_repeats_before_starting_a_cluster(tmp_path: Path) -> None:
    # Rows 0 and 299 fall in other batches: each was answered as a row of its own, under one id,
    # and the rerun counted one of them pending (exit 0), though the output had both answered.
    rows = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(300)]
    rows[299]["id"] = "q0"
    # (A JSON lines input is read as without --ray: test_distributed_staging.py.)
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = str(tmp_path / "out")
    for dry in (True, False):
        with pytest.raises(InputError, match=re.escape("repeats the id 'q0' (rows 0 and 299,")):
            run_on_ray(str(source), out, dry_run=dry, quiet=True, base_url="http://127.0.0.1:9")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]
    assert run_on_ray(str(source), out, dry_run=True, limit=299).exit_code == 0  # not run


@pytest.mark.parametrize(
    ("row", "option", "said"),
    [
        ({"prompt": "x"}, {"prompt_field": "question"}, "no 'question' column and no 'messages'"),
        ({"prompt": 42}, {}, "column 'prompt' must hold strings, not int64"),
        ({"prompt": "x", "answer": "y"}, {}, "column 'answer' is named like an output column"),
    ],
    ids=["prompt-field-typo", "numbers", "result-column"],
)
@needs_ray  # the driver's checks read the input with Ray Data
def test_ray_refuses_an_input_no_row_of_which_could_be_sent_before_starting_a_cluster(
    tmp_path: Path, row: dict[str, Any], option: dict[str, Any], said: str
) -> None:
    # As a Parquet input is refused without --ray; the actors wrote every row invalid, exit 3.
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"r{i}", **row} for i in range(3)]), source)
    for dry in (True, False):
        with pytest.raises(InputError, match=re.escape(said)):
            run_on_ray(str(source), str(tmp_path / "out"), dry_run=dry, quiet=True, **option)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@needs_ray  # the driver's checks read the input with Ray Data
@pytest.mark.parametrize("text", ["", "\n\n"], ids=["empty", "blank-lines"])
def test_ray_an_empty_json_lines_input_is_an_empty_output_without_a_cluster(
    tmp_path: Path, text: str
) -> None:
    # As without --ray; Arrow's JSON reader refused it: "Empty JSON stream", exit 2.
    source = tmp_path / "in.jsonl"
    source.write_text(text)
    out = tmp_path / "out"
    assert run_on_ray(str(source), str(out), dry_run=True).rows == 0
    summary = run_on_ray(str(source), str(out), quiet=True, base_url="http://127.0.0.1:9")
    assert (summary.exit_code, summary.rows) == (0, 0)
    [part] = out.iterdir()
    table = pq.read_table(part)
    assert table.num_rows == 0
    assert table.column_names[:3] == ["id", "answer", "finish_reason"]


def test_ray_refuses_repeat() -> None:
    with pytest.raises(UsageError, match="--repeat is not supported with --ray"):
        run_on_ray("in.parquet", "out", samples=2)


@pytest.mark.slow
@needs_ray
def test_ray_refuses_an_output_another_run_holds_with_exit_75(tmp_path: Path) -> None:
    source = prompts(tmp_path / "in", 4, parts=1)
    out, summary_json = tmp_path / "out", tmp_path / "summary.json"
    with RunLock(out, tmp_path / "out.checkpoint", folder=True):  # as a run in progress does
        done = command(str(source), "-o", str(out), "--ray", "--summary-json", str(summary_json))
    assert done.returncode == 75, done.stderr
    assert "try again later" in done.stderr
    summary = json.loads(summary_json.read_text())
    assert (summary["exit_code"], summary["stopped"], summary["output"]) == (75, "locked", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "summary.json"]


@pytest.mark.slow
@needs_ray
def test_ray_refuses_a_checkpoint_held_from_another_network_namespace_with_exit_75(
    tmp_path: Path,
) -> None:
    netns = other_network_namespace()
    source = prompts(tmp_path / "in", 4, parts=1)
    ck = tmp_path / "shared.checkpoint"
    with RunLock(tmp_path / "first", ck, folder=True):  # a run elsewhere on the same volume
        args = [
            "run",
            str(source),
            "-o",
            str(tmp_path / "second"),
            "--ray",
            "--checkpoint",
            str(ck),
        ]
        done = subprocess.run(
            [*netns, sys.executable, "-m", "batchpizza", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **RAY_ENV},
            check=False,
        )
    assert done.returncode == 75, done.stderr
    assert "another batchpizza run is using this checkpoint" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_ray_summary_counts_the_output_and_this_runs_retries() -> None:
    done = pa.array(["r0", "r1"])  # answered by an earlier run: their attempts are not ours
    batches = [
        pa.table(
            {
                "id": ["r0", "r1", "r2", "r3"],
                "finish_reason": ["stop", "stop", "stop", "error"],
                "attempts": [3, 1, 2, 6],
            }
        ),
        pa.table({"id": ["r4", "r5"], "finish_reason": ["pending", "invalid"], "attempts": [0, 0]}),
    ]
    tally, sent = tally_of(batches, "id", done)
    assert tally == Tally(rows=6, answered=3, failed=1, misuse=0, invalid=1)
    assert sent == 2  # r2 and r3

    status = {"attempts_reported": 8, "stopped": "deadline", "rate": 4.0}
    summary = summarize(tally, sent, status, elapsed_s=1.5, output="out", checkpoint="ck")
    assert set(summary.to_dict()) >= SUMMARY_KEYS
    assert summary["requests"] == 8 and summary["retries"] == 6  # r2 once more, r3 five times
    assert summary["pending"] == 1 and summary["stopped"] == "deadline"
    assert summary["exit_code"] == 4 and summary["rate"] == 4.0

    finished = Tally(rows=2, answered=2)
    summary = summarize(finished, 2, {"attempts_reported": 2, "stopped": "deadline", "rate": 0})
    # A deadline that found the work done is a finished run; rate 0 is unlimited.
    assert summary["stopped"] is None and summary["exit_code"] == 0 and summary["rate"] is None


def test_ray_user_error_is_found_inside_rays_wrapper() -> None:
    class TaskError(Exception):  # as Ray's RayTaskError keeps what the task raised
        def __init__(self, cause: BaseException) -> None:
            super().__init__("a long remote traceback")
            self.cause = cause

    wrong_key = UsageError("HTTP 401: the key is wrong")
    assert user_error(TaskError(wrong_key)) is wrong_key
    assert user_error(TaskError(ValueError("a bug"))) is None


@pytest.mark.slow
@needs_ray
def test_ray_user_error_comes_without_the_advice_ray_data_appended() -> None:
    # Seen under -q: "batchpizza: HTTP 401 ... rerun." then Ray Data's lines on its retries
    # ("Failed to apply UDF transform after 1/1 attempts ... configure `ray.data.DataContext`").
    from ray.data._internal.util import _annotate_exception_with_retry_context

    wrong_key = UsageError("HTTP 401: the key is wrong; fix the cause and rerun.")
    annotated = _annotate_exception_with_retry_context(
        wrong_key,
        description="apply UDF transform",
        attempts=1,
        max_attempts=1,
        total_backoff_s=0.0,
        exception_str=str(wrong_key),
    )
    assert "ray.data" in str(annotated)  # as Ray Data leaves it
    found = user_error(annotated)
    assert found is not None
    assert found.message == "HTTP 401: the key is wrong; fix the cause and rerun."


# -- on a local Ray cluster ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    import ray

    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@needs_ray
@pytest.mark.slow
def test_ray_run_limits_resumes_restarts_and_summarises(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = mock_process("--latency", "10")
    n = 60
    source = prompts(tmp_path / "in", n)
    # Rows r30..r34 fail their first attempt: the second run retries each once.
    table = pq.read_table(source / "part-2.parquet")
    scripted = [
        f"[[fail-first:1]] {p}" if i < 5 else p for i, p in enumerate(table["prompt"].to_pylist())
    ]
    pq.write_table(table.set_column(1, "prompt", pa.array(scripted)), source / "part-2.parquet")
    out, summary_json = tmp_path / "out", tmp_path / "summary.json"
    common = [str(source), "-o", str(out), "--ray", cluster, "--base-url", mock.url]
    common += ["--rate", "0", "--summary-json", str(summary_json), "-q"]

    first = command(*common, "--limit", "20")
    assert first.returncode == 0, first.stderr
    # Quiet: not even Ray Core's error line about Ray Data's own actor arguments, nor Ray Data's
    # warning that 20 rows make fewer blocks than actors: nothing at all on success (cron).
    assert RAY_ACTOR_ARGS_LINE.decode() not in first.stderr
    assert first.stderr == ""
    rows = parquet_rows(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20)]
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)
    # The token columns of a run without Ray: Pizzagpt's counts estimated, and marked so.
    assert all(r["tokens_estimated"] is True and r["prompt_tokens"] > 0 for r in rows)
    summary = json.loads(summary_json.read_text())
    assert set(summary) >= SUMMARY_KEYS
    expected = {"rows": 20, "answered": 20, "failed": 0, "misuse": 0, "invalid": 0, "pending": 0}
    expected |= {"requests": 20, "retries": 0, "exit_code": 0, "stopped": None, "rate": None}
    expected |= {"output": str(out)}
    assert {key: summary[key] for key in expected} == expected
    assert mock.stats()["requests"] == 20

    second = command(*common)  # the rest: only the 40 rows the checkpoint lacks
    assert second.returncode == 0, second.stderr
    rows = parquet_rows(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]
    assert {r["finish_reason"] for r in rows} == {"stop"}
    summary = json.loads(summary_json.read_text())
    assert (summary["rows"], summary["answered"]) == (n, n)
    assert (summary["requests"], summary["retries"]) == (45, 5)
    assert mock.stats()["requests"] == 20 + 45

    # Nothing left to send: the output is written from the checkpoint, and no cluster joined
    # (at an address where none listens, joining one would fail the run).
    written = parquet_rows(out)
    rerun = command(*["127.0.0.1:9" if arg == cluster else arg for arg in common])
    assert rerun.returncode == 0, rerun.stderr
    assert parquet_rows(out) == written
    summary = json.loads(summary_json.read_text())
    assert (summary["rows"], summary["answered"], summary["requests"]) == (n, n, 0)
    assert mock.stats()["requests"] == 20 + 45

    third = command(*common, "--restart")  # forgets every answer: all of them sent again
    assert third.returncode == 0, third.stderr
    summary = json.loads(summary_json.read_text())
    assert (summary["rows"], summary["requests"], summary["retries"]) == (n, n, 0)
    assert mock.stats()["requests"] == 20 + 45 + n
    assert len(parquet_rows(out)) == n
    assert aside(out) == []


@needs_ray
@pytest.mark.slow
def test_ray_splits_a_single_input_file_so_that_every_actor_sends(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    # One file was read as one block, run by one actor at its quarter of --concurrency: at 8,
    # never more than 2 requests in flight (2,000 rows: 74 s; 36 s split).
    mock = mock_process("--latency", "50")
    n = 1200
    source = tmp_path / "in.parquet"
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(n)], "prompt": [f"q {i}" for i in range(n)]}),
        source,
    )
    out = tmp_path / "out"
    args = [str(source), "-o", str(out), "--ray", cluster, "--base-url", mock.url]
    done = command(*args, "--rate", "0", "--concurrency", "8", "-q")
    assert done.returncode == 0, done.stderr
    rows = parquet_rows(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(n)]  # still in input order
    assert all(r["answer"] == mock_answer(r["prompt"]) for r in rows)
    assert mock.stats()["requests"] == n
    assert mock.stats()["peak_in_flight"] > 2  # more than one actor sent at once


@needs_ray
@pytest.mark.slow
def test_ray_mock_writes_json_lines_offline_and_stops_its_server(
    cluster: str, tmp_path: Path
) -> None:
    # Prompt rows and messages rows mixed, as in samples/prompts.jsonl: found with the README's
    # sample, Ray Data's pandas reader (lines=True) made the messages Python objects, NaN where a
    # row has none, so every prompt row had "both 'prompt' and 'messages'".
    chat = [{"role": "user", "content": "Name a topping."}]
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": i, "prompt": f"question {i}"} for i in range(38)]
        + [{"id": 38, "messages": chat}, {"id": 39, "messages": chat}],
    )
    out = tmp_path / "out"
    # --ray without an address joins the cluster RAY_ADDRESS names, as on a cluster's node.
    args = [str(source), "-o", str(out), "--ray", "--mock", "--format", "jsonl", "--rate", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "batchpizza", "run", *args, "-q"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **RAY_ENV, "RAY_ADDRESS": cluster},
        start_new_session=True,
    )
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    rows = [row for part in sorted(out.glob("*.jsonl")) for row in read_jsonl(part)]
    assert [row["id"] for row in rows] == [str(i) for i in range(40)]  # text, as without --ray
    assert all(row["finish_reason"] == "stop" for row in rows), rows
    assert all(row["answer"] == mock_answer(row["prompt"]) for row in rows[:38])
    assert [row["messages"] for row in rows[38:]] == [chat, chat]  # as given, not pickled
    assert (tmp_path / "out.mock-checkpoint").is_dir()
    assert not (tmp_path / "out.checkpoint").exists()
    with pytest.raises(ProcessLookupError):  # the mock server went with the command
        os.killpg(process.pid, 0)


@needs_ray
@pytest.mark.slow
def test_ray_output_of_json_lines_whose_fields_change_shape_is_the_output_without_ray(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    # Arrow's JSON reader refused x (a number, then a string: exit 2), and typed what it read
    # otherwise: ids as numbers, a row without an id refused, nested objects with every key.
    mock = mock_process()
    chat = [{"role": "user", "content": [{"type": "text", "text": "Name a topping."}]}]
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"id": "r0", "prompt": "a", "x": 1, "meta": {"k": 1}, "n": null}\n'
        '{"id": 1, "prompt": "b", "x": "two", "meta": {"k": 1, "j": [1]}}\n'
        '{"prompt": "c", "meta": {"k": "x"}, "big": 123456789012345678901234567890}\n'
        '{"id": "r3", "messages": ' + json.dumps(chat) + ', "late": {"a": null}}\n'
    )
    said: dict[str, list[str]] = {}
    for fmt in ("parquet", "jsonl"):
        local, on_ray = tmp_path / f"local.{fmt}", tmp_path / f"ray-{fmt}"
        common = ["--base-url", mock.url, "--rate", "0", "--format", fmt]
        for out, ray_args in ((local, []), (on_ray, ["--ray", cluster])):
            done = command(str(source), "-o", str(out), *ray_args, *common)
            assert done.returncode == 0, done.stderr
            lines = done.stderr.splitlines()
            said[str(out)] = [line.split(" batchpizza: ")[1] for line in lines if "field '" in line]
        assert said[str(on_ray)] == said[str(local)]
        if fmt == "parquet":
            expected, written = pq.read_table(local), pq.read_table(on_ray)
            assert written.schema == expected.schema
            rows, expected_rows = written.to_pylist(), expected.to_pylist()
        else:
            rows = [row for part in sorted(on_ray.glob("*.jsonl")) for row in read_jsonl(part)]
            expected_rows = read_jsonl(local)
        for row in (*rows, *expected_rows):
            assert row.pop("latency_ms") is not None
        assert rows == expected_rows
        assert [row["id"] for row in rows] == ["r0", "1", "2", "r3"]
        assert {row["finish_reason"] for row in rows} == {"stop"}
    # Said once, as without --ray: x and meta are JSON text, big is exact.
    assert len(said[str(tmp_path / "ray-parquet")]) == 3
    assert said[str(tmp_path / "ray-jsonl")] == []  # JSON lines carry the values themselves


@needs_ray
@pytest.mark.slow
def test_ray_bad_row_without_a_readable_id_has_a_null_id_as_without_ray(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    # The line that is not JSON was given its position (1) under --ray: row "1"'s id too.
    mock = mock_process()
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "1", "prompt": "a"}\n{"id": "2", "prompt": "\n')
    common = ["--base-url", mock.url, "--rate", "0", "--format", "jsonl", "--skip-bad-rows"]
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray-out"
    assert command(str(source), "-o", str(local), *common).returncode == 3
    done = command(str(source), "-o", str(on_ray), "--ray", cluster, *common)
    assert done.returncode == 3, done.stderr
    rows = [row for part in sorted(on_ray.glob("*.jsonl")) for row in read_jsonl(part)]
    assert [(row["id"], row["finish_reason"]) for row in rows] == [("1", "stop"), (None, "invalid")]
    assert [row["id"] for row in read_jsonl(local)] == ["1", None]


@needs_ray
@pytest.mark.slow
def test_ray_kill_while_writing_leaves_the_earlier_output_whole(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = mock_process()
    source = prompts(tmp_path / "in", 60)
    out = tmp_path / "out"
    common = [str(source), "-o", str(out), "--ray", cluster, "--base-url", mock.url]
    common += ["--rate", "0", "-q"]
    first = command(*common)
    assert first.returncode == 0, first.stderr
    before = parquet_rows(out)

    process = start(*common, "--restart")
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.startswith(".out.partial-") for p in aside(out)):
            assert process.poll() is None, "it finished before it was caught writing"
            assert time.monotonic() < deadline, "it never started writing"
            time.sleep(0.002)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert parquet_rows(out) == before  # the earlier output, whole
    assert [p.name.split("-")[0] for p in aside(out)] == [".out.partial"]

    requests = mock.stats()["requests"]
    time.sleep(1.0)  # the killed command's actors are torn down by Ray, not by us
    last = command(*common)
    assert last.returncode == 0, last.stderr
    assert mock.stats()["requests"] == requests  # every answer was in the checkpoint
    # The killed run's answers, the same as the first run's (their latencies differ).
    assert [(r["id"], r["answer"]) for r in parquet_rows(out)] == [
        (r["id"], r["answer"]) for r in before
    ]
    assert aside(out) == []


@needs_ray
@pytest.mark.slow
def test_ray_sigterm_stops_writes_no_output_and_a_signal_summary(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    mock = mock_process()
    source = prompts(tmp_path / "in", 40)
    out, summary_json = tmp_path / "out", tmp_path / "summary.json"
    process = start(
        *[str(source), "-o", str(out), "--ray", cluster, "--base-url", mock.url],
        *["--rate", "5", "--summary-json", str(summary_json)],
    )
    stderr = sigterm_once(process, mock, "requests", 5)
    assert process.returncode == 143, stderr
    assert "Rerun the same command to resume" in stderr and "Traceback" not in stderr
    summary = json.loads(summary_json.read_text())
    assert (summary["exit_code"], summary["stopped"], summary["output"]) == (143, "signal", None)
    assert summary["requests"] >= 5
    # The rows as the checkpoint holds them: what a rerun will not send again, and the rest.
    kept = len(PartStore(str(tmp_path / "out.checkpoint")).read_all(part_schema()))
    assert summary["rows"] == 40 and summary["answered"] == kept
    assert summary["pending"] == 40 - kept > 0
    assert not out.exists() and aside(out) == []


@needs_ray
@pytest.mark.slow
# Paced too: the actors' other workers then wait in the gate for a slot when the 401 stops
# their runner; they went round the gate's loop for good and the run never ended.
@pytest.mark.parametrize("rate", ["0", "2/s"], ids=["unpaced", "paced"])
def test_ray_wrong_api_key_exits_2_with_its_message(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path, rate: str
) -> None:
    mock = mock_process("--api-key", "sk-right")
    source = prompts(tmp_path / "in", 20)
    summary_json = tmp_path / "summary.json"
    done = command(
        *[str(source), "-o", str(tmp_path / "out"), "--ray", cluster, "--provider", "openai"],
        *["--base-url", mock.url + "/v1", "--api-key-env", "NO_SUCH_KEY", "--rate", rate, "-q"],
        *["--summary-json", str(summary_json)],
    )
    assert done.returncode == 2, done.stderr[-3000:]
    # The command says the cause in a line, and under -q nothing else (no Ray Data traceback).
    said = [line for line in done.stderr.splitlines() if line.startswith("batchpizza: ")]
    assert said and said[0].startswith("batchpizza: HTTP 401") and "rerun" in said[0]
    # Quiet: that line alone, without Ray Data's tracebacks (184 lines) or its advice.
    assert done.stderr.splitlines() == [said[0]]
    assert said[0].endswith("fix the cause and rerun.")
    assert json.loads(summary_json.read_text())["exit_code"] == 2
    assert not (tmp_path / "out").exists() and aside(tmp_path / "out") == []
    assert mock.stats()["requests"] < 20  # stopped at the first refusal, not one per row


@needs_ray
@pytest.mark.slow
def test_ray_sigterm_keeps_the_answers_in_flight_and_a_rerun_sends_only_the_rest(
    cluster: str, mock_process: Callable[..., MockProcess], tmp_path: Path
) -> None:
    # The requests in flight at a signal were cut off by the cluster's shutdown: the server
    # counted (and a real one billed) 60 requests, the checkpoint kept 56 answers. Now they
    # finish within the grace, as a single process's do, and their answers are kept.
    mock = mock_process("--latency", "1500")
    n = 40
    source = prompts(tmp_path / "in", n)
    out, summary_json = tmp_path / "out", tmp_path / "summary.json"
    common = [str(source), "-o", str(out), "--ray", cluster, "--base-url", mock.url]
    common += ["--rate", "0", "--concurrency", "8", "--summary-json", str(summary_json)]
    process = start(*common)
    stderr = sigterm_once(process, mock, "in_flight", 2)
    assert process.returncode == 143, stderr
    sent = mock.stats()["requests"]
    kept = len(PartStore(str(tmp_path / "out.checkpoint")).read_all(part_schema()))
    assert 0 < kept == sent < n  # every request sent came back and was kept
    summary = json.loads(summary_json.read_text())
    assert (summary["answered"], summary["requests"]) == (kept, sent)

    rerun = command(*common, "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert mock.stats()["requests"] == n  # the rest, and no row answered twice
    assert [r["id"] for r in parquet_rows(out)] == [f"r{i}" for i in range(n)]
