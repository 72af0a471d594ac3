"""What a prompt row is, whatever file it came from: where its prompt, messages and id live, how
they are checked, and the formatted prompt whose digest identifies the row across runs."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchpizza.config import RunConfig
from batchpizza.errors import RowProblem
from batchpizza.fingerprint import (
    fingerprint,
    identity_digest,
    keyed_by_text,
    request_digest,
    sample_digest,
)
from batchpizza.messages import format_prompt, messages_of
from batchpizza.prompts import MAX_PROMPT_CHARS, too_long
from batchpizza.records import RESULT_COLUMNS, Prompt

if TYPE_CHECKING:
    from batchpizza.prompts import Builder


@dataclass(slots=True)
class BadRecord:
    """A bad row as the scan found it; `id` is kept where it could be read."""

    pos: int
    file: int
    at: int  # JSONL: 1-based physical line; Parquet: 0-based row in its file
    id: str | None
    problem: str
    field: str | None = None


# What the scan yields per batch: the good rows as (pos, id, request digest, text digest, file,
# at) records, ready for the scan index's table, and the bad rows. The request digest is the
# row's part of its fingerprint (fingerprint.request_digest); the text digest, the digest of the
# formatted prompt that checkpoints before fingerprints keyed answers by, only where it differs.
GoodRow = tuple[int, str, bytes, "bytes | None", int, int]
ScanBatch = tuple[list[GoodRow], list[BadRecord]]
# What `interpret` makes of a row: id, formatted prompt, the clean messages (None for a prompt
# row) and an OpenAI Batch line's body without its messages (None otherwise). A tuple: the scan
# makes one per row.
Interpreted = tuple[str, str, "list[dict[str, Any]] | None", "dict[str, Any] | None"]
CHAT_COMPLETIONS = "/v1/chat/completions"
# How rows are read and prompts built, in a kept scan's key (Fields.key): raised with a change
# to it (a CSV quoting rule, how a value prints, a limit on a prompt), so that a scan an earlier
# version kept, of its rows and prompts, is made again rather than reused for the same file.
# 3: images and audio in a message's content are sent (a row an earlier scan found bad).
READING = 3


def prompt_digest(prompt: str) -> bytes:
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def digests(interpreted: Interpreted) -> tuple[bytes, bytes | None]:
    """The row's request digest, and its text digest where that differs (see GoodRow)."""
    _id, text, messages, body = interpreted
    digest = request_digest(text, messages, body)
    return digest, None if messages is None and body is None else _differs(text, digest)


def _differs(text: str, digest: bytes) -> bytes | None:
    said = prompt_digest(text)
    return None if said == digest else said


def digest_of(prompt: Prompt) -> bytes:
    """The request digest of a row as the engine holds it (the same as the scan's)."""
    return request_digest(prompt.text, prompt.messages, prompt.body)


def _text_key(prompt: Prompt) -> bytes:
    return prompt_digest(prompt.text)


def request_key(provider: object) -> Callable[[Prompt], bytes]:
    """What a result of `provider`'s requests is keyed by, with its identity: the digest of the
    text for a provider that sends only text, else the request digest (as the plan joins); for
    a sample after the first (--repeat), that digest with the sample's number in it."""
    identity = getattr(provider, "identity", None)
    key = _text_key if identity is not None and keyed_by_text(identity) else digest_of

    def keyed(prompt: Prompt) -> bytes:
        digest = key(prompt)
        return sample_digest(digest, prompt.sample) if prompt.sample else digest

    return keyed


def fingerprint_key(provider: Any) -> Callable[[Prompt], bytes]:
    """A request's whole fingerprint, identity and request key in one digest: what a store
    without an identity of its own (a Ray part) keeps answers by."""
    ident = identity_digest(provider.identity)
    key = request_key(provider)
    return lambda prompt: fingerprint(ident, key(prompt))


@dataclass(frozen=True)
class Fields:
    """Which input fields hold the prompt, the messages and the id, and which the user named."""

    prompt: str
    messages: str
    id: str
    named_prompt: bool
    named_messages: bool
    named_id: bool
    extra_reserved: tuple[str, ...] = ()  # result columns a provider adds (token counts)
    # Builds each row's prompt from its fields (--template, prompt=); `prompt` is then the
    # output column that holds the built prompt, not a field read.
    build: Builder | None = None
    system: str | None = None  # --system: a system message first in every request
    # An output file starts with an `id` column; rows in memory come back as they were, with
    # no `id` of ours, so an input's `id` beside another id field collides with nothing there.
    writes_id: bool = True
    # The provider sends text alone (Pizzagpt): a message's image or audio makes the row bad.
    text_only: bool = False

    @classmethod
    def from_config(cls, config: RunConfig, extra_reserved: tuple[str, ...] = ()) -> Fields:
        from batchpizza.prompts import builder_for

        prompt, messages, id_ = config.fields_named
        if config.samples > 1:  # --repeat: the output's `sample` column
            extra_reserved = (*extra_reserved, "sample")
        return cls(
            prompt,
            messages,
            id_,
            config.prompt_field is not None,
            config.messages_field is not None,
            config.id_field is not None,
            extra_reserved,
            builder_for(config.template, config.template_source, config.prompt),
            config.system,
            writes_id=config.output is not None,
            text_only=config.provider == "pizzagpt",
        )

    def key(self) -> tuple[Any, ...]:
        """What a scan depends on besides the input's bytes (a changed template rescans)."""
        built = () if self.build is None and self.system is None else (self.build_key,)
        # A scan that let a `sample` field through must not serve a --repeat run, which refuses it.
        sample = ("sample",) if "sample" in self.extra_reserved else ()
        text_only = ("text only",) if self.text_only else ()
        return (
            self.prompt,
            self.messages,
            self.id,
            self.named_prompt,
            self.named_messages,
            self.named_id,
            *built,
            *sample,
            *text_only,
            f"reading {READING}",
        )

    @property
    def build_key(self) -> list[str | None]:
        return [None if self.build is None else self.build.key, self.system]

    @functools.cached_property
    def reserved(self) -> frozenset[str]:
        """Input names that would collide with an output column (the built prompt's too)."""
        own = frozenset(RESULT_COLUMNS) | frozenset(self.extra_reserved)
        built = {self.prompt} if self.build is not None else set()
        return own | built | ({"id"} if self.id != "id" and self.writes_id else frozenset())


def interpret(obj: Mapping[str, Any], fields: Fields, pos: int) -> Interpreted:
    """What one row asks (see Interpreted), or raises RowProblem, which carries the id when it
    could be read, so that --skip-bad-rows can keep it."""
    id_name = fields.id
    body: Mapping[str, Any] | None = None
    if not fields.named_id and "custom_id" in obj and isinstance(obj.get("body"), Mapping):
        id_name, body = "custom_id", obj["body"]  # an OpenAI Batch API request line
    raw_id = obj.get(id_name)
    if raw_id is None:
        if id_name in obj:
            # A null in an id column (a DataFrame's <NA>, an empty Parquet cell, JSON null):
            # numbered by its position, it could take another row's id.
            raise RowProblem(
                "the id must be a non-empty string or an integer, not null (only a row "
                "without the id field is numbered by its position)",
                id_name,
            )
        row_id = str(pos)
    elif isinstance(raw_id, str) and raw_id:
        row_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        row_id = str(raw_id)
    elif isinstance(raw_id, float) and raw_id.is_integer():
        # Most often pandas' doing: an integer column with one missing value is float64, and
        # "not a number" said of 5.0 left the user looking for a NaN in this row.
        raise RowProblem(
            f"the id must be a non-empty string or an integer, not a float ({raw_id!r}): "
            "pandas stores an integer column with a missing value as float64; make the column "
            "its nullable Int64 dtype (.astype('Int64')) or text",
            id_name,
        )
    else:
        kind = "an empty string" if raw_id == "" else with_article(json_type(raw_id))
        raise RowProblem(f"the id must be a non-empty string or an integer, not {kind}", id_name)
    # isdisjoint first: most rows have no reserved field, and it makes no set to say so.
    if not fields.reserved.isdisjoint(obj):
        clash = fields.reserved.intersection(obj)
        if clash != {id_name}:
            name = min(clash - {id_name})
            raise RowProblem(collision(fields, name), name, row_id)
    if fields.build is not None:
        try:
            text = fields.build(obj)
        except RowProblem as bad:
            raise RowProblem(bad.problem, bad.field, row_id) from None
        return _with_system(row_id, text, None, None, fields.system)
    if body is not None:
        url = obj.get("url")
        if url is not None and url != CHAT_COMPLETIONS:
            raise RowProblem(f"unsupported url {url!s:.80}; only {CHAT_COMPLETIONS}", "url", row_id)
        try:
            text, clean = messages_of(body.get("messages"), "body.messages", fields.text_only)
        except RowProblem as bad:
            raise RowProblem(bad.problem, bad.field, row_id) from None
        said = {k: v for k, v in body.items() if k != "messages"}
        if fields.system is not None:
            return _with_system(row_id, text, clean, said, fields.system)
        return row_id, text, clean, said
    prompt, messages = obj.get(fields.prompt), obj.get(fields.messages)
    if prompt is not None and messages is not None:
        if fields.named_prompt != fields.named_messages:
            prompt, messages = (prompt, None) if fields.named_prompt else (None, messages)
        else:
            raise RowProblem(
                f"has both {fields.prompt!r} and {fields.messages!r}; choose one with "
                "--prompt-field or --messages-field",
                None,
                row_id,
            )
    try:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise RowProblem(
                    f"must be a string, not {with_article(json_type(prompt))}", fields.prompt
                )
            if not prompt or prompt.isspace():  # as `not prompt.strip()`, without a copy
                raise RowProblem("is empty", fields.prompt)
            if len(prompt) > MAX_PROMPT_CHARS:
                raise RowProblem(str(too_long(len(prompt))), fields.prompt)
            if fields.system is not None:
                return _with_system(row_id, prompt, None, None, fields.system)
            return row_id, prompt, None, None
        if messages is not None:
            text, clean = messages_of(messages, fields.messages, fields.text_only)
            if fields.system is not None:
                return _with_system(row_id, text, clean, None, fields.system)
            return row_id, text, clean, None
    except RowProblem as bad:
        raise RowProblem(bad.problem, bad.field, row_id) from None
    raise RowProblem(f"has no {fields.prompt!r} and no {fields.messages!r}", None, row_id)


def _with_system(
    row_id: str,
    text: str,
    messages: list[dict[str, Any]] | None,
    body: dict[str, Any] | None,
    system: str | None,
) -> Interpreted:
    """The row with --system's message first: in the messages an OpenAI-compatible server is
    sent, and so in the text Pizzagpt is sent (`System: ...` and `User: ...` lines, as several
    messages are formatted), and in the request's digest either way."""
    if system is None:
        return row_id, text, messages, body
    said: list[dict[str, Any]] = [{"role": "system", "content": system}]
    said += messages if messages is not None else [{"role": "user", "content": text}]
    return row_id, format_prompt(said), said, body


def collision(fields: Fields, name: str) -> str:
    """Why an input field named `name` is refused (see Fields.reserved)."""
    if fields.build is not None and name == fields.prompt:
        return (
            "is where the output puts the built prompt; rename the field, or name the built "
            "prompt's column with --prompt-field (prompt_field= from Python)"
        )
    if name == "sample" and name in fields.extra_reserved:
        return "is named like the output's `sample` column (--repeat, samples=); rename it"
    return "is named like an output column; rename it"


def to_prompt(interpreted: Interpreted) -> Prompt:
    row_id, text, messages, body = interpreted
    said = tuple(messages) if messages is not None else ({"role": "user", "content": text},)
    return Prompt(row_id, text, said, body)


def with_article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def json_type(value: object) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)
