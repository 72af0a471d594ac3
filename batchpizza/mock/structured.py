"""The mock's answers to schema-bound requests (--schema): an OpenAI request with a
`response_format` of type json_schema, or a question ending in the instruction batchpizza puts
into a Pizzagpt prompt. Per request, decided by the digest of what it asks (so a re-ask, whose
messages differ, can fare otherwise): valid JSON 70 %, valid JSON fenced or after a line of prose
15 %, an answer that does not fit 15 % (prose without JSON, or JSON that breaks the schema)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchpizza.structured.answers import INSTRUCTION, instructed

VALID = 0.70  # the share of valid JSON as it is (MockConfig.structured_valid's default)


def bound_prompt(prompt: str, response_format: object) -> str:
    """An OpenAI chat's prompt as the mock reads it: with a json_schema response_format, the
    schema asked for as in a Pizzagpt question, so that one path answers both."""
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return instructed(prompt, spec["schema"])
    return prompt


def structured_answer(question: str, valid: float = VALID) -> str | None:
    """The answer to a schema-bound question; None for any other question. `valid` of them
    valid JSON as it is, half the rest wrapped, half not fitting."""
    at = question.rfind(INSTRUCTION)
    if at < 0:
        return None
    try:
        schema = json.loads(question[at + len(INSTRUCTION) :])
    except ValueError:
        return None
    if not isinstance(schema, dict):
        return None
    digest = hashlib.sha256(question.encode("utf-8", "surrogatepass")).digest()
    roll = int.from_bytes(digest[:8], "big") / 2**64
    seed = int.from_bytes(digest[8:16], "big")
    value = example(schema, schema, seed)
    text = json.dumps(value)
    if roll < valid:
        return text
    if roll < valid + (1 - valid) / 2:
        return f"```json\n{text}\n```" if seed % 2 else f"Here is the JSON you asked for:\n{text}"
    if seed % 2 or not isinstance(value, dict) or not value:
        return f"I would rather answer in words (note {seed % 100000})."
    broken = dict(value)
    broken[next(iter(broken))] = {"not": seed % 100000}  # the wrong type for any typed field
    return json.dumps(broken)


def example(node: Any, root: dict[str, Any], seed: int, depth: int = 0) -> Any:
    """A value valid against `node` (the schemas the tests and README use), varied by `seed`."""
    if not isinstance(node, dict) or depth > 8:
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return example(target, root, seed, depth + 1)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key]:
            return example(node[key][seed % len(node[key])], root, seed, depth + 1)
    if isinstance(node.get("enum"), list) and node["enum"]:
        return node["enum"][seed % len(node["enum"])]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[seed % len(kinds)]
    if kind == "object":
        props = node.get("properties") or {}
        return {
            k: example(v, root, seed // 3 + i, depth + 1) for i, (k, v) in enumerate(props.items())
        }
    if kind == "array":
        count = max(int(node.get("minItems", 0)), 1 + seed % 2)
        return [example(node.get("items", {}), root, seed + i, depth + 1) for i in range(count)]
    if kind == "integer":
        low = int(node.get("minimum", 0))
        high = int(node.get("maximum", low + 100))
        return low + seed % (high - low + 1)
    if kind == "number":
        bottom = float(node.get("minimum", 0))
        top = float(node.get("maximum", bottom + 1))
        return bottom + (top - bottom) * ((seed % 1000) / 1000)
    if kind == "boolean":
        return bool(seed % 2)
    if kind == "string":
        return f"text {seed % 1000}"
    return None
