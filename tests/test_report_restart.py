"""`report` after a --restart: the runs before it went with their answers, so every section,
the Spend included, is of the runs since it, and says so; what the runs before it spent (kept:
--max-cost counts it) is a line of its own. Before, the Runs listed one run while Spend counted
the tokens of all three."""

from __future__ import annotations

from pathlib import Path

from test_checkpoint import result

from batchpizza.checkpoint.store import Checkpoint
from batchpizza.reporting import build_report


def answered(store: Checkpoint, row_id: str, tokens: tuple[int, int]) -> None:
    store.begin_spend(store.begin_run({}), (1.0, 2.0))
    store.write([result(row_id)._replace(prompt_tokens=tokens[0], completion_tokens=tokens[1])])


def test_after_a_restart_the_spend_is_of_the_runs_listed_and_the_rest_apart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ck"
    store = Checkpoint.open(path)
    store.use_identity({"provider": "openai", "model": "m"})
    answered(store, "a", (1000, 500))
    answered(store, "b", (2000, 700))
    store.forget()  # --restart
    answered(store, "a", (30, 10))
    store.close()

    text, numbers, page = build_report(path, html=True)

    assert len(numbers["runs"]) == 1 and numbers["restarted"] is not None
    spend = numbers["spend"]
    assert (spend["input"], spend["output"]) == (30, 10)
    before = spend["before_restart"]
    assert (before["input"], before["output"]) == (3000, 1200)
    assert before["dollars"] == (3000 * 1.0 + 1200 * 2.0) / 1e6
    since = numbers["restarted"][:19].replace("T", " ")
    assert f"Spend (the runs since the --restart of {since}, at their price)" in text
    assert f"Runs (since the --restart of {since}" in text
    assert "before it" in text and "3,000 in" in text
    assert page is not None and f"since the --restart of {since} UTC" in page


def test_without_a_restart_the_spend_is_every_runs(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    store = Checkpoint.open(path)
    store.use_identity({"provider": "openai", "model": "m"})
    answered(store, "a", (1000, 500))
    answered(store, "b", (2000, 700))
    store.close()

    text, numbers, _ = build_report(path, html=False)

    assert numbers["restarted"] is None and len(numbers["runs"]) == 2
    assert (numbers["spend"]["input"], numbers["spend"]["before_restart"]) == (3000, None)
    assert "Spend (every run, at its price)" in text and "Runs\n" in text
