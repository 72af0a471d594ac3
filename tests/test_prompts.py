"""Prompts built from each row: --template, --template-file (Jinja2, sandboxed), prompt= from
Python, and --system. The built prompt is what is sent, what the fingerprint digests (a changed
template or system message re-asks) and what the output's `prompt` column holds; a row it cannot
be built for is a bad row naming the field."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import FAST, read_jsonl, write_jsonl

import batchpizza
from batchpizza.cli import cli
from batchpizza.config import RunConfig
from batchpizza.errors import InputError, RowProblem, UsageError
from batchpizza.mock.replies import mock_answer
from batchpizza.mock.server import ThreadedMockServer
from batchpizza.prompts import FormatTemplate, JinjaTemplate, unescape
from batchpizza.rows import format_prompt

ARTICLES = [
    {"id": "a", "title": "Pizza", "body": "Dough, tomato {and} cheese.", "stars": 4.5},
    {"id": "b", "title": "Pasta", "body": "Durum wheat.", "stars": 4.25},
    {"id": "c", "title": "Risotto", "body": "Rice.", "stars": 3.5},
]
TEMPLATE = "Summarise: {title}\n\n{body} ({{stars}}: {stars})"


def built(row: dict[str, Any]) -> str:
    return f"Summarise: {row['title']}\n\n{row['body']} ({{stars}}: {row['stars']})"


def cli_run(server: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> Any:
    args = ["run", str(inp), "-o", str(out), "--rate", "0", "--no-progress"]
    return CliRunner().invoke(cli, [*args, "--base-url", server.base_url, *extra])


def chat_run(server: ThreadedMockServer, inp: Path, out: Path, *extra: str) -> Any:
    return cli_run(
        server, inp, out, "--provider", "openai", "--base-url", f"{server.base_url}/v1", *extra
    )


# The {field} template


def test_a_template_reads_fields_escapes_braces_and_formats_values() -> None:
    template = FormatTemplate("{{literal}} {title}: {stars:.1f} {tags} {flag} {meta}")
    row = {"title": "Pizza", "stars": 4, "tags": ["a", "b"], "flag": True, "meta": {"k": "é"}}

    assert template(row) == '{literal} Pizza: 4.0 ["a", "b"] true {"k": "é"}'
    assert template.reads == ("title", "stars", "tags", "flag", "meta")


@pytest.mark.parametrize("row", [{"title": "x"}, {"title": "x", "body": None}])
def test_a_missing_or_null_field_is_a_row_problem_naming_it(row: dict[str, Any]) -> None:
    with pytest.raises(RowProblem) as bad:
        FormatTemplate("{title} {body}")(row)
    assert bad.value.field == "body"
    assert "missing" in bad.value.problem


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("Q: {title", "literal brace"),
        ("Q: title}", "literal brace"),
        ("Q: {}", "must name a field"),
        ("Q: {0}", "must name a field"),
        ("no field at all", "names no field"),
        ("{x:{w}}", "nested field"),
    ],
)
def test_a_template_that_cannot_be_read_is_a_usage_error(template: str, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        RunConfig(template=template)


def test_the_command_line_reads_backslash_n_and_t_in_a_template() -> None:
    assert unescape(r"a\n\tb\\n \x") == "a\n\tb\\n \\x"


def test_a_template_builds_every_jsonl_prompt_and_the_output_holds_it(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = write_jsonl(tmp_path / "in.jsonl", ARTICLES), tmp_path / "out.jsonl"

    result = cli_run(mock_api, inp, out, "--template", TEMPLATE.replace("\n", r"\n"))

    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == [built(a) for a in ARTICLES]
    assert [r["answer"] for r in rows] == [mock_answer(built(a)) for a in ARTICLES]
    assert list(rows[0])[:6] == ["id", "title", "body", "stars", "prompt", "answer"]


def test_a_row_missing_a_template_field_is_a_bad_row_with_its_line_and_field(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    rows = [ARTICLES[0], {"id": "x", "title": "No body", "stars": 1}, ARTICLES[2]]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    before = mock_api.stats.requests

    refused = cli_run(mock_api, inp, out, "--template", TEMPLATE)

    assert refused.exit_code == 2
    assert "in.jsonl:2: field 'body': is missing" in refused.stderr
    assert mock_api.stats.requests == before and not out.exists()

    skipped = cli_run(mock_api, inp, out, "--template", TEMPLATE, "--skip-bad-rows")

    assert skipped.exit_code == 3, skipped.output
    got = read_jsonl(out)
    assert [r["finish_reason"] for r in got] == ["stop", "invalid", "stop"]
    assert got[1]["prompt"] is None
    assert got[1]["error"] == "field 'body': is missing or null; the template reads it"


def test_a_parquet_input_gets_a_prompt_column_and_a_missing_column_is_refused(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(ARTICLES), inp)

    result = cli_run(mock_api, inp, out, "--template", TEMPLATE)

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("prompt").type == pa.string()
    assert table.column("prompt").to_pylist() == [built(a) for a in ARTICLES]
    assert table.column("answer").to_pylist() == [mock_answer(built(a)) for a in ARTICLES]

    missing = cli_run(mock_api, inp, tmp_path / "o2.parquet", "--template", "{title} {summary}")
    assert missing.exit_code == 2
    assert "in.parquet: no 'summary' column; the template reads it" in missing.stderr


def test_an_input_prompt_field_is_kept_and_the_built_prompt_goes_where_prompt_field_says(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "What is pizza?"}])
    out = tmp_path / "out.jsonl"

    clash = cli_run(mock_api, inp, out, "--template", "One word: {prompt}")
    assert clash.exit_code == 2
    assert "field 'prompt': is where the output puts the built prompt" in clash.stderr

    result = cli_run(
        mock_api, inp, out, "--template", "One word: {prompt}", "--prompt-field", "sent"
    )

    assert result.exit_code == 0, result.output
    [row] = read_jsonl(out)
    assert row["prompt"] == "What is pizza?"
    assert row["sent"] == "One word: What is pizza?"
    assert row["answer"] == mock_answer("One word: What is pizza?")


def test_a_csv_input_builds_from_its_columns(mock_api: ThreadedMockServer, tmp_path: Path) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text("id,title,year\na,Pizza,1889\nb,Pasta,\n")
    out = tmp_path / "out.jsonl"

    result = cli_run(mock_api, inp, out, "--template", "{title} ({year})", "--skip-bad-rows")

    assert result.exit_code == 3, result.output
    rows = read_jsonl(out)
    assert [r["prompt"] for r in rows] == ["Pizza (1889)", None]
    assert rows[1]["error"] == "field 'year': is missing or null; the template reads it"


# --system, and what the fingerprint makes of it


def test_system_is_the_first_chat_message_and_a_pizzagpt_line(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    said = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    dry = chat_run(mock_api, inp, out, "--system", "Be brief.", "--model", "m", "--dry-run")
    assert '"messages":[{"role":"system","content":"Be brief."},{"role":"user"' in dry.stdout

    chat = chat_run(mock_api, inp, out, "--system", "Be brief.", "--model", "m")
    assert chat.exit_code == 0, chat.output
    [row] = read_jsonl(out)
    assert row["answer"] == mock_answer(format_prompt(said))
    assert row["prompt"] == "Hi"  # the row's own prompt: the system message is the run's

    pizza = cli_run(mock_api, inp, tmp_path / "p.jsonl", "--system", "Be brief.")
    assert pizza.exit_code == 0, pizza.output
    [row] = read_jsonl(tmp_path / "p.jsonl")
    assert format_prompt(said) == "System: Be brief.\nUser: Hi\nAssistant:"
    assert row["answer"] == mock_answer("System: Be brief.\nUser: Hi\nAssistant:")


@pytest.mark.parametrize("provider", ["pizzagpt", "openai"])
def test_another_system_message_resends_every_row_and_says_why(
    mock_api: ThreadedMockServer, tmp_path: Path, provider: str
) -> None:
    rows = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(6)]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    run = chat_run if provider == "openai" else cli_run
    assert run(mock_api, inp, out, "--system", "Be brief.").exit_code == 0
    sent = mock_api.stats.requests

    same = run(mock_api, inp, out, "--system", "Be brief.")
    assert same.exit_code == 0 and mock_api.stats.requests == sent

    dry = run(mock_api, inp, out, "--system", "Be thorough.", "--dry-run")
    assert "  to send     6: 6 prompt changed" in dry.stdout

    other = run(mock_api, inp, out, "--system", "Be thorough.")

    assert other.exit_code == 0, other.output
    assert mock_api.stats.requests == sent + 6
    assert "6 prompt changed" in other.stderr.splitlines()[0]
    none = run(mock_api, inp, out)  # back to no system message: a request of its own again
    assert none.exit_code == 0 and mock_api.stats.requests == sent + 12


def test_a_changed_template_resends_and_the_same_one_sends_nothing(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = write_jsonl(tmp_path / "in.jsonl", ARTICLES), tmp_path / "out.parquet"
    assert cli_run(mock_api, inp, out, "--template", "{title}").exit_code == 0
    sent = mock_api.stats.requests

    assert cli_run(mock_api, inp, out, "--template", "{title}").exit_code == 0
    assert mock_api.stats.requests == sent

    changed = cli_run(mock_api, inp, out, "--template", "About {title}")

    assert changed.exit_code == 0, changed.output
    assert mock_api.stats.requests == sent + 3
    assert "3 prompt changed" in changed.stderr.splitlines()[0]
    assert pq.read_table(out).column("prompt").to_pylist() == [
        f"About {a['title']}" for a in ARTICLES
    ]


def test_a_built_prompt_over_16_mi_characters_is_a_row_problem_saying_its_size() -> None:
    template = FormatTemplate("{a}{b}")
    limit = 16 * 1024 * 1024

    assert len(template({"a": "x" * (limit - 1), "b": "y"})) == limit  # at the limit: sent
    with pytest.raises(RowProblem) as bad:
        template({"a": "x" * limit, "b": "y"})
    assert bad.value.problem.startswith(
        "the built prompt is 16,777,217 characters, over the 16,777,216 a prompt may have"
    )


@pytest.mark.slow  # 0.45 s: 16 MiB of messages checked, digested, written
def test_messages_over_16_mi_characters_are_a_bad_row_saying_their_size(
    mock_api: ThreadedMockServer,
) -> None:
    long = [{"role": "user", "content": "x" * (16 * 1024 * 1024)}, {"role": "user", "content": "y"}]

    rows = batchpizza.answer(
        [{"messages": long}], skip_bad_rows=True, base_url=mock_api.base_url, **FAST
    )

    assert rows[0]["finish_reason"] == "invalid" and mock_api.stats.requests == 0
    assert rows[0]["error"].startswith("field 'messages': the messages' text is 16,777,241 ")


@pytest.mark.slow  # 0.5 s: a 24 MiB Parquet file written and read
def test_a_row_whose_prompt_is_too_long_is_a_bad_row_named_by_its_place(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # 40 MB built from a field: it was sent whole (and kept in the checkpoint and the output).
    big = "word " * (2 << 20)  # 10 Mi characters: under the limit alone, over it twice
    inp, out = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    pq.write_table(pa.table({"id": ["a", "b"], "body": ["short", big]}), inp)

    refused = cli_run(mock_api, inp, out, "--template", "{body}\n\n{body}")

    assert refused.exit_code == 2, refused.output
    assert mock_api.stats.requests == 0
    assert f"{inp} row 1: the built prompt is 20,971,522 characters, over" in refused.stderr
    skipped = cli_run(mock_api, inp, out, "--template", "{body}\n\n{body}", "--skip-bad-rows")
    assert skipped.exit_code == 3, skipped.output
    rows = read_jsonl(out)
    assert [r["finish_reason"] for r in rows] == ["stop", "invalid"]
    assert rows[1]["prompt"] is None and rows[1]["body"] == big

    # A prompt column's value is held to the same limit (a JSONL line or CSV row cannot pass it).
    pq.write_table(pa.table({"id": ["a"], "prompt": [big * 2]}), inp)
    long_prompt = cli_run(mock_api, inp, tmp_path / "o2.jsonl")
    assert long_prompt.exit_code == 2, long_prompt.output
    assert "field 'prompt': the prompt is 20,971,520 characters, over" in long_prompt.stderr


def test_a_jsonl_number_is_said_as_the_line_wrote_it_whatever_its_column_type(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The output column of 1 and 1.5 is double; each prompt is built from its own line's value.
    rows = [{"id": "a", "n": 1}, {"id": "b", "n": 1.5}, {"id": "c", "n": 2.0}]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.parquet"

    result = cli_run(mock_api, inp, out, "--template", "n={n}")

    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.schema.field("n").type == pa.float64()
    assert table.column("prompt").to_pylist() == ["n=1", "n=1.5", "n=2.0"]


def test_a_parquet_double_is_said_as_the_double_it_is(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    # The type is the file's: a double 1.0 (pandas' integers beside a NaN) says 1.0; a format
    # spec or a filter says it otherwise.
    inp, out = tmp_path / "in.parquet", tmp_path / "out.jsonl"
    pq.write_table(pa.table({"id": ["a", "b"], "n": [1.0, 1.5]}), inp)

    result = cli_run(mock_api, inp, out, "--template", "n={n} ({n:g})")

    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in read_jsonl(out)] == ["n=1.0 (1)", "n=1.5 (1.5)"]


# --template-file: Jinja2 in its sandbox


def test_a_jinja_template_file_has_conditions_and_loops(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    template = tmp_path / "t.j2"
    template.write_text(
        "Summarise {{ title }}\n"
        "{% if body is defined %}Text: {{ body }}\n{% endif %}"
        "{% for tag in tags %}- {{ tag }}\n{% endfor %}"
        "{{ row['odd name'] | default('') }}"
    )
    rows = [
        {"id": "a", "title": "Pizza", "body": "Dough.", "tags": ["hot", "round"]},
        {"id": "b", "title": "Pasta", "tags": [], "odd name": "!"},
        {"id": "c", "body": "no title", "tags": []},
    ]
    inp, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"

    result = cli_run(mock_api, inp, out, "--template-file", str(template), "--skip-bad-rows")

    assert result.exit_code == 3, result.output
    got = read_jsonl(out)
    assert got[0]["prompt"] == "Summarise Pizza\nText: Dough.\n- hot\n- round\n"
    assert got[1]["prompt"] == "Summarise Pasta\n!"
    assert got[0]["answer"] == mock_answer(got[0]["prompt"])
    assert got[2]["error"] == "field 'title': is missing or null; the template reads it"


def test_a_jinja_template_writes_a_whole_list_or_object_as_json_as_a_field_template_does() -> None:
    row = {
        "id": "a",
        "tags": ["hot", "é"],
        "meta": {"k": 1, "when": datetime.date(2024, 1, 2)},
    }
    jinja = JinjaTemplate("{{ tags }} {{ meta }} {{ row.tags }} {{ tags | list }}", "t.j2")
    field = FormatTemplate("{tags} {meta}")

    # JSON, not Python's repr (['hot', 'é'] {'k': 1, 'when': datetime.date(2024, 1, 2)}); what
    # JSON cannot hold inside one, as Python prints it.
    whole = '["hot", "é"] {"k": 1, "when": "2024-01-02"}'
    assert field(row) == whole
    assert jinja(row) == f'{whole} ["hot", "é"] ["hot", "é"]'


def test_jinja_filters_loops_and_indexing_still_see_the_real_values() -> None:
    source = (
        "{{ tags[0] }} {{ tags | join('+') }} {{ tags | length }} {{ meta.k + 1 }} "
        "{% for t in tags %}<{{ t }}>{% endfor %} {{ meta | dictsort | first | first }} "
        "{{ meta.k is number }} {{ tags | map('upper') | list }}"
    )
    row = {"tags": ["hot", "round"], "meta": {"k": 1}}

    assert JinjaTemplate(source, "t.j2")(row) == (
        'hot hot+round 2 2 <hot><round> k true ["HOT", "ROUND"]'
    )


def test_a_jinja_template_writes_a_whole_boolean_or_null_as_json_as_a_field_template_does() -> None:
    # Jinja2 wrote Python's True and None where {flag} wrote true.
    row = {"flag": True, "off": False, "meta": {"score": None}}
    jinja = JinjaTemplate("{{ flag }} {{ off }} {{ meta.score }} {{ meta }}", "t.j2")
    field = FormatTemplate("{flag} {off} {meta}")

    assert field(row) == 'true false {"score": null}'
    assert jinja(row) == 'true false null {"score": null}'


def test_jinja_tests_conditions_and_filters_still_see_a_boolean_as_itself() -> None:
    source = (
        "{% if flag %}on{% endif %}{% if not off %} off{% endif %} {{ flag is sameas true }} "
        "{{ flag | string }} {{ off | int }} {{ meta.score is none }} {{ meta.score | default(1, true) }}"
    )
    row = {"flag": True, "off": False, "meta": {"score": None}}

    assert JinjaTemplate(source, "t.j2")(row) == "on off true True 0 true 1"


def test_a_csv_boolean_prints_the_same_in_both_templates(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp = tmp_path / "in.csv"
    inp.write_text("id,flag,shout\na,True,TRUE\nb,false,FALSE\n")
    jinja = tmp_path / "t.j2"
    jinja.write_text("{{ flag }} {{ shout }}{% if flag %} yes{% endif %}")

    field = cli_run(mock_api, inp, tmp_path / "f.jsonl", "--template", "{flag} {shout}")
    built = cli_run(mock_api, inp, tmp_path / "j.jsonl", "--template-file", str(jinja))

    assert field.exit_code == 0 and built.exit_code == 0, (field.output, built.output)
    assert [r["prompt"] for r in read_jsonl(tmp_path / "f.jsonl")] == ["true true", "false false"]
    assert [r["prompt"] for r in read_jsonl(tmp_path / "j.jsonl")] == [
        "true true yes",
        "false false",
    ]


def test_the_jinja_sandbox_refuses_python_internals(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    template = tmp_path / "t.j2"
    template.write_text("{{ title.__class__.__mro__ }}")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "title": "x"}])

    result = cli_run(mock_api, inp, tmp_path / "o.jsonl", "--template-file", str(template))

    assert result.exit_code == 2
    assert "the sandbox refuses" in result.stderr


def test_a_template_file_that_cannot_be_read_or_parsed_is_a_usage_error(tmp_path: Path) -> None:
    broken = tmp_path / "t.j2"
    broken.write_text("line one\n{% if x %}never closed")
    with pytest.raises(UsageError, match=r"t.j2: line 2: .*endif"):
        RunConfig(template_file=str(broken))
    with pytest.raises(UsageError, match="cannot read"):
        RunConfig(template_file=str(tmp_path / "absent.j2"))


def test_ways_to_build_a_prompt_exclude_each_other_and_not_on_ray(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give one way to build the prompt"):
        RunConfig(template="{a}", prompt=lambda row: "x")
    with pytest.raises(UsageError, match="rows need no messages"):
        RunConfig(template="{a}", messages_field="chat")
    with pytest.raises(UsageError, match="--system is empty"):
        RunConfig(system=" ")
    with pytest.raises(UsageError, match="prompt= must be a function"):
        RunConfig(prompt="{a}")  # type: ignore[arg-type]
    inp = write_jsonl(tmp_path / "in.jsonl", ARTICLES)
    args = ["run", str(inp), "-o", str(tmp_path / "o"), "--ray", "--template", "{title}"]
    on_ray = CliRunner().invoke(cli, args)
    assert on_ray.exit_code == 2
    assert "--template: not with --ray yet" in on_ray.stderr


# From Python


def test_answer_builds_from_a_template_for_a_dataframe(mock_api: ThreadedMockServer) -> None:
    df = pd.DataFrame(ARTICLES)

    out = batchpizza.answer(df, template=TEMPLATE, base_url=mock_api.base_url, **FAST)

    assert list(out.columns)[: len(df.columns) + 2] == [*df.columns, "prompt", "answer"]
    assert out["prompt"].tolist() == [built(a) for a in ARTICLES]
    assert out["answer"].tolist() == [mock_answer(built(a)) for a in ARTICLES]
    assert "prompt" not in df.columns  # the input is not changed


def test_answer_with_a_system_message(mock_api: ThreadedMockServer) -> None:
    out = batchpizza.answer(["Hi"], system="Be brief.", base_url=mock_api.base_url, **FAST)

    assert out[0]["answer"] == mock_answer("System: Be brief.\nUser: Hi\nAssistant:")


def test_a_prompt_function_builds_each_row_and_its_exception_makes_the_row_bad(
    mock_api: ThreadedMockServer,
) -> None:
    def prompt(row: dict[str, Any]) -> str:
        if row["stars"] < 4:
            raise ValueError(f"too few stars for {row['title']}")
        return f"Praise {row['title']}"

    options: dict[str, Any] = {"prompt": prompt, "base_url": mock_api.base_url, **FAST}
    with pytest.raises(InputError) as refused:
        batchpizza.answer(ARTICLES, **options)
    assert "row 2: prompt= raised ValueError: too few stars for Risotto" in str(refused.value)

    out = batchpizza.answer(ARTICLES, skip_bad_rows=True, **options)

    assert [r["prompt"] for r in out] == ["Praise Pizza", "Praise Pasta", None]
    assert [r["finish_reason"] for r in out] == ["stop", "stop", "invalid"]
    assert out[2]["error"] == "prompt= raised ValueError: too few stars for Risotto"
    assert out[0]["answer"] == mock_answer("Praise Pizza")


def test_a_prompt_function_over_a_parquet_file_sees_every_column(
    mock_api: ThreadedMockServer, tmp_path: Path
) -> None:
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(ARTICLES), inp)

    def prompt(row: dict[str, Any]) -> str:
        return " | ".join(f"{k}={row[k]}" for k in sorted(row))

    summary = batchpizza.run(inp, out, prompt=prompt, base_url=mock_api.base_url, **FAST)

    assert summary["exit_code"] == 0
    first = pq.read_table(out).column("prompt").to_pylist()[0]
    assert first == "body=Dough, tomato {and} cheese. | id=a | stars=4.5 | title=Pizza"
    missing = batchpizza.answer(
        [{"x": 1}],
        prompt=lambda row: row["title"],
        skip_bad_rows=True,
        base_url=mock_api.base_url,
        **FAST,
    )
    assert missing[0]["error"] == "field 'title': is missing; prompt= reads it"
