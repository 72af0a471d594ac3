"""The command line as a user meets it: help texts, usage errors (exit 2, before anything is read
or sent, no secret echoed), `status`, and the OpenAI-compatible provider end to end.

Every command runs through click's CliRunner in this process, against the local fake API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from conftest import read_jsonl, write_jsonl

from batchpizza import redact
from batchpizza.cli import cli
from batchpizza.messages import format_prompt
from batchpizza.mock import tokens
from batchpizza.mock.faults import MockConfig
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer

PASSWORD = "Pa55w0rd"
KEY = "sk-mock-Hq7TOPSECRETkey0123456789"


@pytest.fixture(autouse=True)
def _forget_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secrets registered for masking by an earlier test would hide a leak in this one."""
    monkeypatch.setattr(redact, "_known", set())


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question number {i}"} for i in range(n)]


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


# -- help --------------------------------------------------------------------------------------


def test_run_help_shows_two_examples_and_every_exit_code() -> None:
    result = invoke(["run", "--help"])

    assert result.exit_code == 0, result.output
    text = result.stdout
    examples = text[text.index("Examples:") :].splitlines()[1:]
    commands = [line.strip() for line in examples if line.strip().startswith("batchpizza run ")]
    assert len(commands) >= 2
    section = text[text.index("Exit codes:") :].splitlines()[1:]
    listed = {code for line in section if line.strip() for code in line.split()[0].split("/")}
    assert {"0", "1", "2", "3", "4", "75", "129", "130", "143"} <= listed


@pytest.mark.parametrize("command", ["run", "status", "mock-server"])
def test_every_option_has_help_text(command: str) -> None:
    cmd = cli.commands[command]
    with click.Context(cmd, info_name=command) as ctx:
        options = [p for p in cmd.get_params(ctx) if isinstance(p, click.Option)]
    assert options
    for option in options:
        assert option.help and option.help.strip(), option.opts

    result = invoke([command, "--help"])
    assert result.exit_code == 0, result.output
    for option in options:
        assert option.opts[-1] in result.stdout


# -- usage errors ------------------------------------------------------------------------------


def test_run_with_an_unknown_output_extension_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(2))

    result = invoke(
        ["run", str(source), "-o", str(tmp_path / "out.csv"), "--base-url", "http://127.0.0.1:9"]
    )

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert ".parquet or .jsonl" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_status_without_a_checkpoint_exits_2(tmp_path: Path) -> None:
    for args in (
        ["status", str(tmp_path / "out.jsonl")],
        ["status", "--checkpoint", str(tmp_path / "missing.checkpoint")],
        ["status", str(tmp_path / "out.jsonl"), "--json"],
        ["status"],
    ):
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        no_traceback(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", ["grown", "edited", "gone"])
def test_status_says_when_the_input_changed_since_the_last_run_read_it(
    mock_api: ThreadedMockServer, tmp_path: Path, change: str
) -> None:
    # A cron job's input grew after a finished run: status said "rerun 0 to send", as if the
    # job were done, while the rerun would send the new rows.
    source, out = write_jsonl(tmp_path / "in.jsonl", rows(4)), tmp_path / "out.jsonl"
    run = ["run", str(source), "-o", str(out), "--base-url", mock_api.base_url, "--rate", "0"]
    assert invoke([*run, "--no-progress", "-q"]).exit_code == 0
    before = invoke(["status", str(out)])
    assert "(4 rows)" in before.stdout
    assert "changed since" not in before.stdout
    assert json.loads(invoke(["status", str(out), "--json"]).stdout)["input_changed"] is False
    if change == "grown":
        write_jsonl(source, rows(6))
    elif change == "edited":
        source.write_text(source.read_text().replace("number 1", "NUMBER 1"))
    else:
        source.unlink()

    after = invoke(["status", str(out)])

    assert after.exit_code == 0, after.output
    assert "(4 rows when the last run read it; changed since)" in after.stdout
    assert (
        "rerun      0 to send (with the last run's provider, model, params); the input changed "
        "since: the rerun reads it again (--dry-run says what it sends)" in after.stdout
    )
    assert json.loads(invoke(["status", str(out), "--json"]).stdout)["input_changed"] is True


def test_a_ray_checkpoint_folder_without_ray_exits_2_saying_so(tmp_path: Path) -> None:
    # `batchpizza status out` after `run ... -o out --ray`: out.checkpoint is a folder of
    # parts, which SQLite called "disk I/O error" (exit 1), and run "Is a directory" (exit 1).
    source = write_jsonl(tmp_path / "in.jsonl", rows(2))
    (tmp_path / "out.checkpoint").mkdir()
    for args in (
        ["status", str(tmp_path / "out")],
        ["report", str(tmp_path / "out")],
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--checkpoint",
         str(tmp_path / "out.checkpoint"), "--base-url", "http://127.0.0.1:9"],
    ):  # fmt: skip
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        no_traceback(result)
        assert "is a folder, as a --ray run keeps its answers" in result.stderr, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.checkpoint"]
    assert list((tmp_path / "out.checkpoint").iterdir()) == []


BAD_URLS = [
    pytest.param(["--base-url", f"alice:{PASSWORD}@127.0.0.1:8080"], id="scheme-forgotten"),
    pytest.param(["--base-url", f"http://alice:{PASSWORD}@127.0.0.1:99999"], id="port-99999"),
    pytest.param(["--base-url", "http://x@[::1"], id="unclosed-ipv6"),
    pytest.param(["--base-url", f"http://alice:{PASSWORD}@[::1"], id="unclosed-ipv6-password"),
    pytest.param(["--proxy", f"http://bob:{PASSWORD}@127.0.0.1:99999"], id="proxy-port"),
    pytest.param(["--proxy", f"http://bob:{PASSWORD}@127.0.0.1:http"], id="proxy-port-name"),
    pytest.param(["--proxy", f"bob:{PASSWORD}@127.0.0.1:3128"], id="proxy-scheme-forgotten"),
]


@pytest.mark.parametrize("url_args", BAD_URLS)
def test_a_bad_url_is_a_usage_error_before_anything_else_and_never_shows_the_password(
    tmp_path: Path, url_args: list[str]
) -> None:
    # The input does not exist: an error about the URL shows it was checked first.
    args = ["run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out.jsonl")]
    if url_args[0] == "--proxy":
        args += ["--base-url", "http://127.0.0.1:9"]

    result = invoke([*args, *url_args])

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert PASSWORD not in result.output
    assert "missing.jsonl" not in result.output
    assert url_args[0] in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCHPIZZA_BASE_URL", f"alice:{PASSWORD}@127.0.0.1:8080"),
        ("BATCHPIZZA_PROXY", f"http://bob:{PASSWORD}@127.0.0.1:99999"),
    ],
)
def test_a_bad_url_from_the_environment_is_a_usage_error_without_the_password(
    tmp_path: Path, variable: str, value: str
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(1))
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl")]
    if variable == "BATCHPIZZA_PROXY":
        args += ["--base-url", "http://127.0.0.1:9"]

    result = invoke(args, env={variable: value})

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert PASSWORD not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_a_standard_proxy_variable_with_a_bad_port_is_a_usage_error(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(1))
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock_api.base_url]
    env = {"HTTP_PROXY": f"http://bob:{PASSWORD}@127.0.0.1:99999"}

    result = invoke(args, env=env)

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert PASSWORD not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]


def test_a_standard_proxy_variable_without_a_scheme_is_refused_and_its_password_never_written(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(1))
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock_api.base_url]
    password = "Sch3melessPw"
    env = {"HTTP_PROXY": f"bob:{password}@127.0.0.1:3128"}

    result = invoke([*args, "-v", "--max-retries", "0"], env=env)

    assert password not in result.output
    assert password.encode() not in all_bytes(tmp_path)
    assert result.exit_code == 2, result.output


# -- the OpenAI provider end to end --------------------------------------------------------------


@pytest.fixture
def openai_api(mock_api: ThreadedMockServer) -> ThreadedMockServer:
    mock_api.config = MockConfig(seed=1, api_key=KEY)
    return mock_api


def openai_args(server: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(inp),
        "-o",
        str(out),
        "--provider",
        "openai",
        "--base-url",
        f"{server.base_url}/v1",
        "--rate",
        "0",
        "--no-progress",
        *extra,
    ]


def test_openai_provider_answers_every_row_with_finish_reason_and_token_counts(
    openai_api: ThreadedMockServer, tmp_path: Path
) -> None:
    data = [*rows(6), {"id": "short", "prompt": "one word answer [[big:5]]"}]
    source = write_jsonl(tmp_path / "in.jsonl", data)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    extra = ["--model", "m", "--param", "temperature=0", "--param", "max_tokens=2", "-v"]
    extra += ["--summary-json", str(summary)]

    result = invoke(openai_args(openai_api, source, out, *extra), env={"OPENAI_API_KEY": KEY})

    assert result.exit_code == 0, result.output
    written = read_jsonl(out)
    assert [r["id"] for r in written] == [r["id"] for r in data]
    for row, obj in zip(written[:-1], data, strict=False):
        # max_tokens=2 cuts the mock's answer to its first two tokens ("pizza", "-").
        assert row["answer"] == mock_answer(obj["prompt"])[:6]
        assert row["finish_reason"] == "length"
        assert row["prompt_tokens"] == tokens.prompt_usage([obj["prompt"]])
        assert row["completion_tokens"] == 2
        assert row["tokens_estimated"] is False  # the server's own count
        assert row["model"] == "m"
        assert row["error"] is None
    assert written[-1]["finish_reason"] == "stop"
    assert written[-1]["answer"] == "pizza"
    assert json.loads(summary.read_text())["answered"] == len(data)
    # The key appears nowhere: not on stdout, not in the -v log, not in any file.
    assert KEY not in result.output
    assert KEY.encode() not in all_bytes(tmp_path)


def test_openai_provider_with_a_wrong_key_stops_at_once_with_exit_2(
    openai_api: ThreadedMockServer, tmp_path: Path
) -> None:
    wrong = "sk-wrong-Zz9NOTTHEKEY0123456789"
    source = write_jsonl(tmp_path / "in.jsonl", rows(50))
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    extra = ["--model", "m", "--concurrency", "4", "-v", "--summary-json", str(summary)]

    result = invoke(openai_args(openai_api, source, out, *extra), env={"OPENAI_API_KEY": wrong})

    assert result.exit_code == 2, result.output
    no_traceback(result)
    assert 1 <= openai_api.stats.requests <= 4
    assert "401" in result.stderr or "key" in result.stderr.lower()
    assert wrong not in result.output
    assert wrong.encode() not in all_bytes(tmp_path)
    assert KEY.encode() not in all_bytes(tmp_path)


def read_openai_batch_output(path: Path) -> dict[str, str | dict[str, Any]]:
    """A reader written to OpenAI's documented Batch output format, as a user's tool would be:
    one JSON object per line, `custom_id` to match the request, then either `response`
    (`status_code`, `body`: a chat.completion, or an error body when the status is not 200) or
    `error`. Returns custom_id -> the answer's content, or the error object."""
    results: dict[str, str | dict[str, Any]] = {}
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        item = json.loads(line)
        assert isinstance(item["id"], str) and item["id"]
        custom_id = item["custom_id"]
        if item.get("error"):
            results[custom_id] = item["error"]
            continue
        response = item["response"]
        if response["status_code"] != 200:  # as in OpenAI's batch error files
            results[custom_id] = response["body"]["error"]
            continue
        results[custom_id] = response["body"]["choices"][0]["message"]["content"]
    return results


def test_openai_batch_output_is_read_back_by_a_reader_of_openais_format(
    openai_api: ThreadedMockServer, tmp_path: Path
) -> None:
    requests = []
    for i in range(5):
        messages = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"batch question {i}"},
        ]
        body = {"model": "m", "messages": messages, "max_tokens": 50}
        requests.append(
            {
                "custom_id": f"request-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
        )
    failing = {"role": "user", "content": "this one fails [[status:400]]"}
    requests.append(
        {
            "custom_id": "request-bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [failing]},
        }
    )
    source = write_jsonl(tmp_path / "batch.jsonl", requests)
    out = tmp_path / "results.jsonl"

    result = invoke(
        openai_args(openai_api, source, out, "--format", "openai-batch", "--max-retries", "0"),
        env={"OPENAI_API_KEY": KEY},
    )

    assert result.exit_code == 3, result.output
    results = read_openai_batch_output(out)
    assert list(results) == [r["custom_id"] for r in requests]
    for request in requests[:-1]:
        expected = mock_answer(format_prompt(request["body"]["messages"]))
        assert results[request["custom_id"]] == expected
    error = results["request-bad"]
    assert isinstance(error, dict) and error["message"]
    assert KEY.encode() not in all_bytes(tmp_path)


# -- run's help, environment variables and the mock's rate --------------------------------------


def test_run_help_says_rate_auto_and_the_mock_default() -> None:
    result = invoke(["run", "--help"])

    text = " ".join(result.stdout.split())
    assert "auto or auto:MAX" in text
    assert "[default: 2/s; 20/s with --mock]" in text


def test_every_run_option_has_a_batchpizza_variable_named_by_the_rule() -> None:
    run = cli.commands["run"]
    options = [p for p in run.params if isinstance(p, click.Option)]

    for option in options:
        long = next(o for o in option.opts if o.startswith("--"))
        assert option.envvar == "BATCHPIZZA_" + long[2:].upper().replace("-", "_"), long
    help_text = " ".join(invoke(["run", "--help"]).stdout.split())
    assert "[env var: BATCHPIZZA_CONCURRENCY;" in help_text


def test_run_options_come_from_the_environment_and_the_command_line_wins(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", rows(5))
    out = tmp_path / "out.jsonl"
    env = {
        "BATCHPIZZA_OUTPUT": str(out),
        "BATCHPIZZA_BASE_URL": mock_api.base_url,
        "BATCHPIZZA_RATE": "0",
        "BATCHPIZZA_LIMIT": "3",
        "BATCHPIZZA_PROGRESS": "false",
        "BATCHPIZZA_SUMMARY_JSON": str(tmp_path / "summary.json"),
        "BATCHPIZZA_PROMPT_FIELD": "prompt",
    }

    result = invoke(["run", str(source)], env=env)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r2"]
    assert json.loads((tmp_path / "summary.json").read_text())["rows"] == 3

    again = invoke(["run", str(source), "--limit", "4"], env=env)
    assert again.exit_code == 0, again.output
    assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r2", "r3"]


def test_a_mock_run_defaults_to_20_per_second_unless_a_rate_is_given() -> None:
    from batchpizza.config import RunConfig

    assert RunConfig(input="a.jsonl", output="b.jsonl", mock=True).rate_per_s == 20.0
    assert RunConfig(input="a.jsonl", output="b.jsonl").rate_per_s == 2.0
    assert RunConfig(input="a.jsonl", output="b.jsonl", mock=True, rate="3/s").rate_per_s == 3.0
