"""An answer's JSON: found in the text, parsed and validated; the instruction that asks for it
where the API has no field for a schema (Pizzagpt); the follow-up that re-asks a wrong one.

What is tolerated around the one JSON value, tried in this order:
1. the whole answer is JSON (surrounding white space aside);
2. a fenced code block (```json ... ``` or ``` ... ```), with any text before and after it: the
   first such block whose content is JSON;
3. prose before and after the value: the first `{` or `[` from which a whole JSON value parses
   (so "Here it is: {...} Hope this helps." gives the object).
Nothing else: no comments, trailing commas, single quotes or several values merged, and no
NaN, Infinity or a number beyond a double's range (JavaScript's and Python's, not JSON's: a
column or a JSON output cannot hold them as the answer said). An integer of any size is kept
exactly (orjson alone would read one beyond 64 bits as a float).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from batchpizza import jsoncodec, storable
from batchpizza.records import Prompt

# Pizzagpt's prompt ends with this, then the schema as compact JSON (README, "Structured
# outputs"); the bundled mock finds schema-bound questions by it.
INSTRUCTION = (
    "\n\nAnswer with only a JSON value (no other text) that is valid against this JSON Schema:\n"
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\r?\n(.*?)```", re.DOTALL)
_ERROR_CHARS = 300  # of a validation error put back to the model and kept in `error`
_TRIES = 20  # openings a prose answer is tried at, at most


# The text holds no JSON value where one is tolerated, or a value JSON has not (NaN): said why.
NoJSON = jsoncodec.NotJSON
# For a value inside prose: json's, made strict as jsoncodec.loads is (integers stay exact).
_decoder = jsoncodec.STRICT


def extract(text: str) -> Any:
    """The one JSON value of an answer (see the module's docstring); NoJSON if there is none.
    A lone surrogate escaped in it ("\\ud83d", half an emoji) becomes U+FFFD, as everywhere
    else a server's text is stored (storable.py): no column or JSON writer takes one."""
    value = _extract(text)
    if _SURROGATE_ESCAPE.search(text) is None:
        return value  # the usual case: no scan of the value
    try:
        return storable.json_value(value)
    except RecursionError:  # nested nearly as deep as the stack: no value we can write
        raise NoJSON("the answer holds no JSON value") from None


def _extract(text: str) -> Any:
    # Why a value that parsed but for what JSON has not (NaN) was refused: said in the re-ask,
    # so that the model can mend it.
    why: str | None = None
    try:
        return _loads(text)
    except NoJSON as exc:
        why = str(exc)
    except ValueError:
        pass
    for block in _FENCE.finditer(text):
        try:
            return _loads(block.group(1))
        except NoJSON as exc:
            why = why or str(exc)
        except ValueError:
            continue
    start = 0
    for _ in range(_TRIES):
        opens = [i for i in (text.find("{", start), text.find("[", start)) if i >= 0]
        if not opens:
            break
        at = min(opens)
        try:
            value, _end = _decoder.raw_decode(text, at)
            return value
        except NoJSON as exc:
            why = why or str(exc)
            start = at + 1
        except (ValueError, RecursionError):  # RecursionError: see _loads
            start = at + 1
    raise NoJSON("the answer holds no JSON value" + (f" ({why})" if why else ""))


def _loads(text: str) -> Any:
    """`text` as strict JSON, as jsoncodec.loads reads it: orjson for most answers (0.5 us,
    json 3 us); json where an integer may be beyond 64 bits (orjson reads one as a float) or
    orjson refuses (a lone surrogate escape, NaN). NoJSON naming what JSON has not (NaN,
    Infinity, 1e400), else ValueError."""
    fast = jsoncodec.orjson_loads()
    if fast is not None and not jsoncodec.may_hold_big_int(text.encode("utf-8", "replace")):
        try:
            return fast(text)
        except ValueError:
            pass
    try:
        return _decoder.decode(text)
    except RecursionError:  # nested deeper than Python's stack: no value we can hold
        raise ValueError("nested too deeply") from None


def validation_error(text: str, validate: Callable[[Any], Any]) -> tuple[Any, str | None]:
    """(the answer's JSON value, None) when it parses and validates; else (None, why not)."""
    import fastjsonschema

    try:
        value = extract(text)
    except NoJSON as exc:
        return None, str(exc)
    try:
        validate(value)
    except fastjsonschema.JsonSchemaValueException as exc:
        return None, _shorten(exc.message)  # names the place: "data.score must be ..."
    return value, None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def instruction(schema: Mapping[str, Any]) -> str:
    """What a prompt for an API without a schema field ends with: the instruction, the schema."""
    return INSTRUCTION + json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def instructed(text: str, schema: Mapping[str, Any]) -> str:
    return text + instruction(schema)


def follow_up(prompt: Prompt, answer: str, error: str) -> Prompt:
    """The re-ask of `prompt` after `answer` did not fit: its messages, the answer as the
    assistant's, then a user message with the error."""
    from batchpizza.messages import format_prompt

    messages = tuple(prompt.messages) or ({"role": "user", "content": prompt.text},)
    said = (
        f"That answer is not valid: {error}. Answer again with only the corrected JSON value, "
        "valid against the JSON Schema."
    )
    asked = (*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": said})
    return dataclasses.replace(prompt, text=format_prompt(asked), messages=asked)
