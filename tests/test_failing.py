"""When nothing a run sends can succeed (controls/failing.py): stop early, with one message."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import read_jsonl, write_jsonl
from test_reliability_edges import http, raw_server

from batchpizza.cli import cli
from batchpizza.controls.failing import DOWN_FOR, FIRST_ROWS, FailingWatch
from batchpizza.errors import BadReply, ConnectionRefused, HTTPStatusError, RequestTimeout
from batchpizza.providers.http import looks_like_page


def test_the_first_rows_all_rejected_with_400_stop_the_run() -> None:
    watch = FailingWatch()
    said = [watch.record(HTTPStatusError(400, "unknown parameter")) for _ in range(FIRST_ROWS)]
    assert said[:-1] == [None] * (FIRST_ROWS - 1)
    assert said[-1] is not None and "HTTP 400" in said[-1]


def test_one_answer_among_them_means_the_parameters_are_fine() -> None:
    watch = FailingWatch()
    watch.record(None)
    assert all(watch.record(HTTPStatusError(422, "bad")) is None for _ in range(3 * FIRST_ROWS))


def test_refused_connections_for_the_whole_stretch_stop_the_run() -> None:
    now = [0.0]
    watch = FailingWatch(clock=lambda: now[0])
    said = None
    while said is None and now[0] < 10 * DOWN_FOR:
        said = watch.record(ConnectionRefused("refused"))
        now[0] += 1.0
    assert said is not None and "connection refused" in said
    assert DOWN_FOR <= now[0] <= DOWN_FOR + 2


def test_a_reply_within_the_stretch_starts_it_again() -> None:
    now = [0.0]
    watch = FailingWatch(clock=lambda: now[0])
    for _ in range(int(DOWN_FOR) * 3):
        assert watch.record(ConnectionRefused("refused")) is None
        now[0] += 0.5
        if now[0] % (DOWN_FOR / 2) == 0:
            watch.record(HTTPStatusError(503, "busy"))  # the server is there after all


def test_the_first_attempts_all_given_a_web_page_stop_the_run() -> None:
    # A --base-url that is a website (or a login or challenge page answering for the API): the
    # page is not JSON, which is retried, so every row spent all its attempts on it.
    watch = FailingWatch()
    page = BadReply("reply is not JSON: '<!DOCTYPE html>'", status=200, page=True)
    said = []
    for _ in range(FIRST_ROWS):
        said.append(watch.record(page))
        watch.record(RequestTimeout("slow"))  # other failures neither count nor reset
    assert said[:-1] == [None] * (FIRST_ROWS - 1)
    assert said[-1] is not None and "web page (HTML)" in said[-1] and "--base-url" in said[-1]


def test_the_first_rows_all_given_404_stop_the_run() -> None:
    watch = FailingWatch()
    said = [watch.record(HTTPStatusError(404, "Not Found")) for _ in range(FIRST_ROWS)]
    assert said[-1] is not None and "HTTP 404" in said[-1]


def test_garbled_json_and_answers_before_pages_do_not_stop_it() -> None:
    garbled = FailingWatch()  # a reply cut short, or a server's bad day: not a page
    broken = BadReply('reply is not JSON: \'{"answer": {"con\'', status=200)
    assert all(garbled.record(broken) is None for _ in range(3 * FIRST_ROWS))
    answered = FailingWatch()
    answered.record(None)
    page = BadReply("reply is not JSON: '<html>'", status=200, page=True)
    assert all(answered.record(page) is None for _ in range(3 * FIRST_ROWS))


def test_a_page_is_told_from_json_by_its_first_character() -> None:
    assert looks_like_page(b"  \n<!DOCTYPE html><html>")
    assert looks_like_page(b"<html><body>Just a moment...</body></html>")
    assert not looks_like_page(b'{"answer": 1')
    assert not looks_like_page(b"Misuse detected")
    assert not looks_like_page(b"")


@pytest.mark.slow
def test_a_server_answering_a_web_page_to_every_request_stops_the_run_early(
    tmp_path: Path,
) -> None:
    page = b"<!DOCTYPE html><html><body>Just a moment...</body></html>"
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(60)]
    )
    out = tmp_path / "out.jsonl"
    with raw_server(lambda asked, n, head: http("200 OK", page, "text/html")) as server:
        result = CliRunner().invoke(
            cli,
            ["run", str(src), "-o", str(out), "--base-url", server.url, "--rate", "0",
             "--concurrency", "4", "--no-progress"],
        )  # fmt: skip
        sent = sum(server.counts.values())
    assert result.exit_code == 4, result.output
    assert "web page (HTML)" in result.output
    # Stopped after the first FIRST_ROWS attempts and those then in flight: was 6 a row (360).
    assert sent < FIRST_ROWS + 4 + 1, sent
    rows = read_jsonl(out)
    assert len(rows) == 60 and sum(r["finish_reason"] == "pending" for r in rows) > 40
