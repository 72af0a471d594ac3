"""The structured package's leaves: a schema read and checked, what OpenAI's strict mode takes,
the JSON found in an answer, the re-ask's messages, and the schema as an Arrow type (property
tests over generated schemas and values: every valid value round-trips through Parquet)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchpizza.errors import UsageError
from batchpizza.records import Prompt
from batchpizza.structured import Structured
from batchpizza.structured.answers import INSTRUCTION, NoJSON, extract, follow_up, instructed
from batchpizza.structured.arrow import arrow_typing
from batchpizza.structured.schema import (
    compile_validator,
    is_strict,
    read_schema,
    response_format,
    schema_name,
)

REVIEW: dict[str, Any] = {
    "title": "Review",
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative"]},
        "score": {"type": "number"},
        "stars": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "reason": {"type": ["string", "null"]},
    },
    "required": ["label", "score", "stars", "tags", "reason"],
    "additionalProperties": False,
}


# -- reading and checking ------------------------------------------------------------------------


def test_a_schema_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(REVIEW))
    assert read_schema(str(path)) == REVIEW


def test_a_file_that_is_not_json_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"type": "object",\n')
    with pytest.raises(UsageError, match=r"s.json: not JSON: .* line 2 column 1"):
        read_schema(str(path))


def test_a_schema_against_the_metaschema_is_refused_naming_the_place() -> None:
    bad = {"type": "object", "properties": {"a": {"type": "object", "minProperties": -1}}}
    with pytest.raises(UsageError, match=r"at /properties/a/minProperties: must be bigger"):
        read_schema(bad)


def test_a_schema_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(UsageError, match="schema="):
        read_schema(42)
    with pytest.raises(UsageError, match="a JSON object, not list"):
        read_schema(_path_of([1, 2]))


def _path_of(value: Any) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(value, handle)
    return handle.name


def test_a_pydantic_model_class_gives_its_json_schema() -> None:
    from typing import Literal

    from pydantic import BaseModel

    class Verdict(BaseModel):
        label: Literal["yes", "no"]
        confidence: float

    schema = read_schema(Verdict)
    assert schema["properties"]["label"]["enum"] == ["yes", "no"]
    assert Structured(schema).check('{"label": "yes", "confidence": 0.5}')[1] is None


@pytest.mark.parametrize("ref", ["http://127.0.0.1:9/x.json", "other.json", "file:///etc/hostname"])
def test_a_ref_outside_the_schema_is_refused_not_fetched(ref: str) -> None:
    # fastjsonschema fetched it (urlopen): a request to whatever host the schema named, and the
    # run died of the network's error (URLError) with a traceback.
    schema = {"type": "object", "properties": {"a": {"$ref": ref}}}
    with pytest.raises(UsageError, match="is outside the schema, and is not fetched"):
        read_schema(schema)


@pytest.mark.parametrize(
    ("ref", "said"),
    [
        ("#/$defs/nothere", "$ref #/$defs/nothere at /properties/a/$ref points at nothing in the "
         "schema: /$defs has no 'nothere'"),
        ("#/definitions/x", "$ref #/definitions/x at /properties/a/$ref points at nothing in the "
         "schema: / has no 'definitions'"),
        ("missing.json", "$ref missing.json at /properties/a/$ref is outside the schema"),
        # A digit to str.isdigit() that is no index (int() refused it: a traceback).
        ("#/$defs/b/allOf/\u00b2", "$ref #/$defs/b/allOf/\u00b2 at /properties/a/$ref points at "
         "nothing in the schema: /$defs/b/allOf has no '\u00b2'"),
    ],
)  # fmt: skip
def test_a_ref_that_leads_nowhere_is_refused_naming_itself_and_its_place(
    ref: str, said: str
) -> None:
    # fastjsonschema said "Unresolvable ref: $defs" for the first: neither the ref nor where.
    schema = {
        "type": "object",
        "$defs": {"b": {"allOf": [{}]}},
        "properties": {"a": {"$ref": ref}},
    }
    with pytest.raises(UsageError) as caught:
        read_schema(_path_of(schema))
    assert said in str(caught.value)
    assert str(caught.value).startswith("--schema ")


def test_refs_that_lead_somewhere_are_taken() -> None:
    schema = {
        "type": "object",
        "definitions": {"a/b": {"type": "string"}},
        "properties": {
            "x": {"$ref": "#/definitions/a~1b"},
            "v": {"allOf": [{"type": "integer"}]},
            "y": {"$ref": "#/properties/v/allOf/0"},
            "w": {"$ref": "#"},
        },
    }
    assert read_schema(schema) == schema


def test_a_schema_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    # An enum value "\ud83d" (escaped in the file) failed every request's encoding, and the
    # run died of an UnboundLocalError in the runner that hid it.
    path = tmp_path / "s.json"
    path.write_text('{"type": "string", "enum": ["\\ud83d x"]}')
    with pytest.raises(UsageError, match="lone surrogate"):
        read_schema(path)
    assert read_schema({"type": "string", "enum": ["\U0001f600"]})  # a whole one is fine


def test_strict_only_where_openai_takes_it() -> None:
    assert is_strict(REVIEW)
    loose = {**REVIEW, "required": ["label"]}
    assert not is_strict(loose)
    assert not is_strict({**REVIEW, "additionalProperties": True})
    one_of = {**REVIEW, "properties": {**REVIEW["properties"], "x": {"oneOf": [{}]}}}
    assert not is_strict({**one_of, "required": [*REVIEW["required"], "x"]})
    assert not is_strict({"type": "array", "items": {"type": "string"}})


def test_the_response_format_names_the_schema_by_its_title() -> None:
    sent = response_format(REVIEW)
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "Review", "schema": REVIEW, "strict": True},
    }
    assert schema_name({"title": "my schema!"}) == "my_schema"
    assert schema_name({}) == "answer"


# -- the JSON of an answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        '  {"a": 1}\n',
        '```json\n{"a": 1}\n```',
        'Sure! Here it is:\n```\n{"a": 1}\n```\nAnything else?',
        'Here is the JSON: {"a": 1} Hope this helps.',
        'The answer {is} this: {"a": 1}',
    ],
)
def test_the_one_json_value_is_found_where_models_put_it(text: str) -> None:
    assert extract(text) == {"a": 1}


@pytest.mark.parametrize("text", ["no json here", "{a: 1}", "{'a': 1}", '```\n{"a": 1,}\n```'])
def test_what_is_not_tolerated_holds_no_json(text: str) -> None:
    with pytest.raises(NoJSON):
        extract(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"score": NaN}', "NaN is not JSON"),
        ('Here:\n```json\n{"score": Infinity}\n```', "Infinity is not JSON"),
        ('The score: {"score": -Infinity} as asked.', "-Infinity is not JSON"),
        ('{"score": 1e400}', "the number 1e400 is beyond a double's range"),
    ],
)
def test_nan_and_infinity_are_not_json_and_the_reask_says_why(text: str, said: str) -> None:
    # They were taken: `{"score": NaN}` fitted a schema of a required number, was written as
    # null in JSONL (against its own schema), and Infinity as NaN in Parquet; never re-asked.
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    with pytest.raises(NoJSON):
        extract(text)
    value, error = Structured(schema).check(text)
    assert value is None
    assert error == f"the answer holds no JSON value ({said})"


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 123456789012345678901234567890}',
        '```json\n{"n": 123456789012345678901234567890}\n```',
        'Here: {"n": 123456789012345678901234567890} as asked.',
    ],
)
def test_an_integer_beyond_64_bits_in_an_answer_is_kept_exactly(text: str) -> None:
    # orjson read it as 1.2345678901234568e+29: the JSONL output's `parsed` said a float the
    # answer never did, and its last digits were lost.
    value = extract(text)
    assert value == {"n": 123456789012345678901234567890}
    assert isinstance(value["n"], int)


@pytest.mark.parametrize("fenced", [False, True])
def test_json_nested_deeper_than_the_stack_is_no_json_not_a_crash(fenced: bool) -> None:
    # A hostile answer of 100,000 nested arrays raised RecursionError out of the worker and
    # killed the run with a traceback.
    deep = "[" * 100_000 + "]" * 100_000
    text = f"Here:\n```json\n{deep}\n```" if fenced else deep
    with pytest.raises(NoJSON):
        extract(text)
    assert Structured({}).check(text)[1] == "the answer holds no JSON value"


def test_check_names_the_place_that_does_not_fit() -> None:
    structured = Structured(REVIEW)
    value, error = structured.check('{"label": "maybe"}')
    assert value is None and error == (
        "data must contain ['reason', 'score', 'stars', 'tags'] properties"
    )
    full = '{"label": "maybe", "score": 1, "stars": 2, "tags": [], "reason": null}'
    assert structured.check(full) == (None, "data.label must be one of ['positive', 'negative']")
    ok = '{"label": "positive", "score": 1, "stars": 2, "tags": [], "reason": null}'
    assert structured.check(ok) == (json.loads(ok), None)


def test_a_reask_is_the_messages_the_answer_and_the_error() -> None:
    prompt = Prompt("r1", "Rate it", ({"role": "user", "content": "Rate it"},))
    again = follow_up(prompt, "nope", "the answer holds no JSON value")
    assert [m["role"] for m in again.messages] == ["user", "assistant", "user"]
    assert again.messages[1]["content"] == "nope"
    assert "the answer holds no JSON value" in again.messages[2]["content"]
    assert again.text.startswith("User: Rate it\nAssistant: nope\nUser: ")
    assert again.id == "r1"


def test_pizzagpt_prompts_end_with_the_instruction_and_the_schema() -> None:
    text = instructed("Rate it", {"type": "object"})
    assert text == "Rate it" + INSTRUCTION + '{"type":"object"}'


# -- Arrow typing --------------------------------------------------------------------------------


def test_the_schema_types_the_column() -> None:
    typed, untyped = arrow_typing(REVIEW)
    assert untyped == []
    assert typed.type == pa.struct(
        [
            pa.field("label", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("score", pa.float64(), nullable=False),
            pa.field("stars", pa.int64(), nullable=False),
            pa.field("tags", pa.list_(pa.field("item", pa.string())), nullable=False),
            pa.field("reason", pa.string()),
        ]
    )


def test_what_cannot_be_typed_is_json_text_named_by_its_place() -> None:
    schema = {
        "type": "object",
        "properties": {
            "shape": {
                "oneOf": [
                    {"type": "object", "properties": {"r": {"type": "number"}}},
                    {"type": "object", "properties": {"w": {"type": "integer"}}},
                ]
            },
            "free": {"type": "object"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
    }
    typed, untyped = arrow_typing(schema)
    assert untyped == [
        ("/properties/shape", "oneOf of unlike branches"),
        ("/properties/free", "an object without properties"),
    ]
    assert typed.type.field("shape").type == pa.string()
    assert typed.type.field("n").type == pa.int64()
    assert typed.convert({"shape": {"r": 1.5}, "free": {}, "n": None}) == {
        "shape": '{"r":1.5}',
        "free": "{}",
        "n": None,
    }


def test_a_recursive_ref_is_json_text_and_a_plain_ref_is_followed() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"kids": {"items": {"$ref": "#/$defs/node"}, "type": "array"}},
            },
            "name": {"type": "string"},
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/node"}, "name": {"$ref": "#/$defs/name"}},
    }
    typed, untyped = arrow_typing(schema)
    assert typed.type.field("name").type == pa.string()
    assert untyped == [
        ("/properties/root/properties/kids/items", "a recursive $ref (#/$defs/node)")
    ]


def test_integers_stay_exact() -> None:
    typed, _ = arrow_typing({"type": "integer"})
    big = 2**62 + 1
    assert pa.array([typed.convert(big)], typed.type).to_pylist() == [big]


# Generated schemas, and values valid against them.

_names = st.text("abcdefgh_", min_size=1, max_size=6)
_leaf = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "string", "enum": ["a", "b", "c"]},
        {"type": ["integer", "null"]},
        {"anyOf": [{"type": "string"}, {"type": "null"}]},
    ]
)


def _objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        props = draw(st.dictionaries(_names, children, min_size=1, max_size=4))
        required = draw(st.lists(st.sampled_from(sorted(props)), unique=True))
        return {"type": "object", "properties": props, "required": required}

    return build()


_schemas = st.recursive(
    _leaf,
    lambda children: st.one_of(
        _objects(children), children.map(lambda items: {"type": "array", "items": items})
    ),
    max_leaves=8,
)


def _values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "anyOf" in schema:
        return st.one_of([_values(branch) for branch in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if isinstance(kind, list):
        return st.one_of([_values({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "string":
        return st.text(max_size=5)
    if kind == "integer":
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(_values(schema["items"]), max_size=3)

    @st.composite
    def obj(draw: st.DrawFn) -> dict[str, Any]:
        out = {}
        for name, sub in schema["properties"].items():
            if name in schema["required"] or draw(st.booleans()):
                out[name] = draw(_values(sub))
        return out

    return obj()


def _expected(schema: dict[str, Any], value: Any) -> Any:
    """What the column holds for a valid value: absent properties null, numbers as floats."""
    if value is None:
        return None
    if "anyOf" in schema:
        return value
    kind = schema.get("type")
    if kind == "number":
        return float(value)
    if kind == "array":
        return [_expected(schema["items"], v) for v in value]
    if kind == "object":
        return {n: _expected(s, value.get(n)) for n, s in schema["properties"].items()}
    return value


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_valid_value_round_trips_through_parquet(data: st.DataObject) -> None:
    schema = data.draw(_schemas)
    values = data.draw(st.lists(_values(schema), min_size=1, max_size=4))
    validate = compile_validator(schema)
    for value in values:
        validate(value)  # the generator makes only valid values
    typed, untyped = arrow_typing(schema)
    assert untyped == []
    column = pa.array([*(typed.convert(v) for v in values), None], typed.type)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"parsed": column}), buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue())).column("parsed").to_pylist()
    assert back[-1] is None
    for got, value in zip(back, values, strict=False):
        assert _same(got, _expected(schema, value))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def test_a_schema_is_refused_on_ray_for_now() -> None:
    from batchpizza.config import RunConfig

    with pytest.raises(UsageError, match="--schema: not with --ray"):
        RunConfig(schema=REVIEW).refuse_on_ray()


def test_the_shipped_metaschema_validator_is_what_fastjsonschema_generates() -> None:
    from batchpizza.structured import metaschema

    shipped = Path(metaschema.__file__).with_name("draft07.py").read_text()
    assert shipped == metaschema.generated()


def test_an_integer_beyond_64_bits_is_null_where_null_may_go() -> None:
    # A valid answer with a required integer beyond int64 made the Parquet writer fail the run
    # ("declared non-nullable but contains nulls"): its struct is null instead.
    schema = {
        "type": "object",
        "properties": {
            "stars": {"type": "integer"},
            "extra": {"type": "integer"},
            "inner": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
                "required": ["n"],
            },
            "many": {"type": "array", "items": {"type": "integer"}},
        },
        "required": ["stars", "inner", "many"],
    }
    typed, _ = arrow_typing(schema)
    huge = 2**64
    values = [
        {"stars": huge, "inner": {"n": 1}, "many": []},
        {"stars": 1, "extra": huge, "inner": {"n": 1}, "many": [2, huge]},
        {"stars": 1, "extra": 2, "inner": {"n": float(huge)}, "many": []},
    ]
    column = pa.array([typed.convert(v) for v in values], typed.type)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"parsed": column}), buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue())).column("parsed").to_pylist()
    assert back == [None, {"stars": 1, "extra": None, "inner": {"n": 1}, "many": [2, None]}, None]


def test_flatten_follows_a_ref_at_the_root_as_pydantic_makes_for_a_recursive_model() -> None:
    # answer(schema=Node, flatten=True) was refused ("the schema's root must be an object with
    # properties") while the same schema typed `parsed` as a struct.
    from pydantic import BaseModel

    from batchpizza.records import OutputRow
    from batchpizza.structured.columns import ParsedColumns

    class Node(BaseModel):
        value: int
        kids: list[Node] = []

    Node.model_rebuild()
    columns = ParsedColumns(Structured(read_schema(Node)), flatten=True)
    assert columns.names == ["value", "kids"]
    row = OutputRow(*(None,) * len(OutputRow._fields))._replace(
        answer='{"value": 1, "kids": [{"value": 2, "kids": []}]}', finish_reason="stop"
    )
    values, kids = columns.arrays([row])
    assert values.to_pylist() == [1] and len(kids.to_pylist()[0]) == 1


def test_a_lone_surrogate_escaped_in_an_answer_becomes_the_replacement_character() -> None:
    # '{"label": "\ud83d"}' (half an emoji, escaped) parsed to a str no writer can encode:
    # the Parquet and the JSONL output both failed the run (UnicodeEncodeError), on every rerun.
    text = '{"label": "cut \\ud83d", "pair": "\\ud83d\\ude00", "\\udc00": 1}'
    value = extract(text)
    assert value == {"label": "cut \ufffd", "pair": "\U0001f600", "\ufffd": 1}
    json.dumps(value).encode("utf-8")  # writable
    assert extract(f"```json\n{text}\n```") == value
