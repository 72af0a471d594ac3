"""Input files -> prompt rows, streamed in batches so memory does not grow with the input.

A `Source` is read up to three times, each pass streaming: `scan` (validate every row, before
anything is sent), `prompts` (the rows still to send) and `carried` (the fields the writer copies
through). Every pass goes through `interpret`, so all three agree on what a row is.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchpizza import jsoncodec
from batchpizza.config import RunConfig
from batchpizza.errors import BadRow, InputError
from batchpizza.provider import format_prompt

RESULT_COLUMNS = ("answer", "finish_reason", "misuse", "error", "attempts", "latency_ms", "model")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer "line" is a binary file or a missing newline
BATCH_ROWS = 4096
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class Row:
    """One input row as the scan sees it. `problem` is set for a bad row; `id` may still be set."""

    pos: int
    file: int
    at: int  # JSONL: 1-based physical line; Parquet: 0-based row in its file
    id: str | None
    prompt: str | None
    problem: str | None = None
    field: str | None = None

    @property
    def digest(self) -> bytes | None:
        return prompt_digest(self.prompt) if self.prompt is not None else None


def prompt_digest(prompt: str) -> bytes:
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True)
class Fields:
    """Which input fields hold the prompt, the messages and the id, and which the user named."""

    prompt: str
    messages: str
    id: str
    named_prompt: bool
    named_messages: bool
    named_id: bool

    @classmethod
    def from_config(cls, config: RunConfig) -> Fields:
        prompt, messages, id_ = config.fields_named
        return cls(
            prompt,
            messages,
            id_,
            config.prompt_field is not None,
            config.messages_field is not None,
            config.id_field is not None,
        )

    def reserved(self) -> set[str]:
        """Input names that would collide with an output column."""
        return set(RESULT_COLUMNS) | ({"id"} if self.id != "id" else set())


class _Bad(Exception):
    """A bad row: what is wrong, in which field, and the row's id where it could be read."""

    def __init__(self, problem: str, field: str | None = None, row_id: str | None = None) -> None:
        self.problem = problem
        self.field = field
        self.id = row_id


def _messages_prompt(value: object, name: str) -> str:
    if not isinstance(value, list) or not value:
        raise _Bad("must be a non-empty list of {role, content} objects", name)
    clean: list[dict[str, str]] = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise _Bad(f"item {i} is not an object", name)
        role, content = item.get("role"), item.get("content")
        if not isinstance(role, str) or not role:
            raise _Bad(f"item {i} has no role string", name)
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            parts = [p.get("text") for p in content if isinstance(p, Mapping)]
            content = "\n".join(p for p in parts if isinstance(p, str)) if parts else None
        if not isinstance(content, str):
            raise _Bad(f"item {i} has no content string", name)
        clean.append({"role": role, "content": content})
    prompt = format_prompt(clean)
    if not prompt.strip():
        raise _Bad("the messages hold no text", name)
    return prompt


def interpret(obj: Mapping[str, Any], fields: Fields, pos: int) -> tuple[str, str]:
    """(id, formatted prompt) of one row, or raises _Bad, which carries the id when it could be
    read, so that --skip-bad-rows can keep it."""
    id_name = fields.id
    if not fields.named_id and "custom_id" in obj and isinstance(obj.get("body"), Mapping):
        id_name, obj = "custom_id", {"custom_id": obj["custom_id"], **obj["body"]}  # OpenAI batch
    raw_id = obj.get(id_name)
    if raw_id is None:
        row_id = str(pos)
    elif isinstance(raw_id, str) and raw_id:
        row_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        row_id = str(raw_id)
    else:
        kind = "an empty string" if raw_id == "" else f"a {_json_type(raw_id)}"
        raise _Bad(f"the id must be a non-empty string or an integer, not {kind}", id_name)
    clash = fields.reserved().intersection(obj)
    clash.discard(id_name)
    if clash:
        raise _Bad("is named like an output column; rename it", min(clash), row_id)
    prompt, messages = obj.get(fields.prompt), obj.get(fields.messages)
    if prompt is not None and messages is not None:
        if fields.named_prompt != fields.named_messages:
            prompt, messages = (prompt, None) if fields.named_prompt else (None, messages)
        else:
            raise _Bad(
                f"has both {fields.prompt!r} and {fields.messages!r}; choose one with "
                "--prompt-field or --messages-field",
                None,
                row_id,
            )
    try:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise _Bad(f"must be a string, not a {_json_type(prompt)}", fields.prompt)
            if not prompt.strip():
                raise _Bad("is empty", fields.prompt)
            return row_id, prompt
        if messages is not None:
            return row_id, _messages_prompt(messages, fields.messages)
    except _Bad as bad:
        raise _Bad(bad.problem, bad.field, row_id) from None
    raise _Bad(f"has no {fields.prompt!r} and no {fields.messages!r}", None, row_id)


def _json_type(value: object) -> str:
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


@dataclass
class Source:
    """The input as one or more files. Open with `open_source`."""

    kind: str  # "jsonl" or "parquet"
    paths: list[Path]
    names: list[str]  # what messages call each file
    fields: Fields
    spooled: Path | None = None  # standard input copied to disk, removed by close()
    field_types: dict[str, set[str]] = field(default_factory=dict)  # JSONL: name -> JSON types seen

    def close(self) -> None:
        if self.spooled is not None:
            self.spooled.unlink(missing_ok=True)

    # -- the three passes -------------------------------------------------------------------

    def scan(self) -> Iterator[list[Row]]:
        """Every row, validated, in batches. Records the carried fields' JSON types on the way."""
        if self.kind == "jsonl":
            yield from _batched(self._scan_jsonl())
        else:
            yield from _batched(self._scan_parquet())

    def prompts(self, wanted: Iterable[int]) -> Iterator[tuple[int, str, str]]:
        """(pos, id, prompt) of the rows at the given ascending positions; the others are
        skipped without being parsed."""
        for pos, _file, _at, obj in self._objects(iter(wanted)):
            if obj is None:
                continue
            try:
                row_id, prompt = interpret(obj, self.fields, pos)
            except _Bad:
                continue  # the file changed since the scan; the writer will notice and say so
            yield pos, row_id, prompt

    def carried(self) -> Iterator[list[Mapping[str, Any]] | pa.RecordBatch]:
        """For the writer, in input order: JSONL batches of dicts (the input objects), Parquet
        record batches without the id column."""
        if self.kind == "jsonl":
            batch: list[Mapping[str, Any]] = []
            for _pos, _file, _at, obj in self._objects(None):
                batch.append(obj if isinstance(obj, Mapping) else {})
                if len(batch) >= BATCH_ROWS:
                    yield batch
                    batch = []
            if batch:
                yield batch
            return
        for path in self.paths:
            pf = pq.ParquetFile(path)
            yield from pf.iter_batches(batch_size=BATCH_ROWS)

    # -- JSONL --------------------------------------------------------------------------------

    def _lines(self) -> Iterator[tuple[int, int, bytes | None]]:
        """(file index, 1-based line, bytes or None when too long), blank lines skipped."""
        for index, path in enumerate(self.paths):
            with _read_errors(self.names[index]), _open_binary(path, self.names[index]) as handle:
                number = 0
                while True:
                    line = handle.readline(MAX_LINE_BYTES + 1)
                    if not line:
                        break
                    number += 1
                    if number == 1 and line.startswith(_BOM):
                        line = line[len(_BOM) :]
                    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                        while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(
                            b"\n"
                        ):
                            pass
                        yield index, number, None
                        continue
                    if line.strip():
                        yield index, number, line

    def _objects(self, wanted: Iterator[int] | None) -> Iterator[tuple[int, int, int, Any]]:
        """(pos, file, at, parsed object or None) of every row, or of the `wanted` positions
        (ascending); only the rows yielded are parsed."""
        target = next(wanted, None) if wanted is not None else 0
        if target is None:
            return
        rows = self._parquet_rows() if self.kind == "parquet" else self._lines()
        for pos, (index, at, data) in enumerate(rows):
            if wanted is not None and pos != target:
                continue
            obj = data
            if self.kind == "jsonl":
                try:
                    obj = jsoncodec.loads(data) if isinstance(data, bytes) else None
                except ValueError:
                    obj = None
            yield pos, index, at, obj
            if wanted is not None:
                target = next(wanted, None)
                if target is None:
                    return

    def _scan_jsonl(self) -> Iterator[Row]:
        types = self.field_types
        id_name = self.fields.id
        for pos, (index, number, line) in enumerate(self._lines()):
            row = Row(pos, index, number, None, None)
            if line is None:
                row.problem = f"line longer than {MAX_LINE_BYTES} bytes"
                yield row
                continue
            try:
                obj = jsoncodec.loads(line)
            except ValueError:
                row.problem = _why_not_json(line)
                yield row
                continue
            if not isinstance(obj, dict):
                row.problem = f"not a JSON object but a {_json_type(obj)}"
                yield row
                continue
            for name, value in obj.items():
                if name != id_name and value is not None:
                    seen = types.get(name)
                    if seen is None:
                        types[name] = seen = set()
                    seen.add(_arrow_kind(value))
            _fill(row, obj, self.fields)
            yield row

    # -- Parquet ------------------------------------------------------------------------------

    def _parquet_columns(self, schema: pa.Schema, name: str) -> list[str]:
        f = self.fields
        present = set(schema.names)
        clash = sorted(present & f.reserved() - {f.id})
        if clash:
            raise InputError(
                f"{name}: column {clash[0]!r} is named like an output column; rename it"
            )
        if f.prompt not in present and f.messages not in present and "custom_id" not in present:
            raise InputError(f"{name}: no {f.prompt!r} column and no {f.messages!r} column")
        if f.prompt in present and not _is_string(schema.field(f.prompt).type):
            raise InputError(
                f"{name}: column {f.prompt!r} must hold strings, not {schema.field(f.prompt).type}"
            )
        wanted = [f.prompt, f.messages, f.id, "custom_id", "body"]
        return [c for c in wanted if c in present]

    def _parquet_rows(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        for index, path in enumerate(self.paths):
            pf = _parquet_file(path, self.names[index])
            columns = self._parquet_columns(pf.schema_arrow, self.names[index])
            at = 0
            with _read_errors(self.names[index]):
                for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    for obj in rb.to_pylist():
                        yield index, at, obj
                        at += 1

    def _scan_parquet(self) -> Iterator[Row]:
        for pos, (index, at, obj) in enumerate(self._parquet_rows()):
            row = Row(pos, index, at, None, None)
            _fill(row, obj, self.fields)
            yield row


def _fill(row: Row, obj: Mapping[str, Any], fields: Fields) -> None:
    try:
        row.id, row.prompt = interpret(obj, fields, row.pos)
    except _Bad as bad:
        row.problem, row.field = bad.problem, bad.field
        row.id = bad.id


def _why_not_json(line: bytes) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start + 1}"
    try:
        import json

        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} at column {exc.colno}"
    except ValueError as exc:
        return f"invalid JSON: {exc}"
    return "invalid JSON"


def _arrow_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "json"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "json"  # lists and objects are kept as JSON text: their inner types may vary per row


def _is_string(dtype: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or (pa.types.is_dictionary(dtype) and _is_string(dtype.value_type))
    )


def _batched(rows: Iterator[Row]) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


@contextlib.contextmanager
def _read_errors(name: str) -> Iterator[None]:
    """A file that breaks while being read (truncated gzip, torn Parquet page, I/O error) is an
    input error naming the file, not a traceback."""
    try:
        yield
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _open_binary(path: Path, name: str) -> IO[bytes]:
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb", buffering=1024 * 1024)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None


def _parquet_file(path: Path, name: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(f"{name}: not a readable Parquet file: {exc}") from None


def open_source(config: RunConfig, spool_dir: Path, stdin: IO[bytes] | None = None) -> Source:
    """Resolve INPUT to its files. File-level problems raise InputError; rows are not read yet."""
    fields = Fields.from_config(config)
    if config.input == "-":
        handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed by Source.close
            dir=spool_dir, prefix=".batchpizza-stdin-", suffix=".jsonl", delete=False
        )
        with handle:
            shutil.copyfileobj(stdin or sys.stdin.buffer, handle, 1024 * 1024)
        path = Path(handle.name)
        return Source("jsonl", [path], ["<stdin>"], fields, spooled=path)
    path = Path(config.input)
    name = str(config.input)
    lower = path.name.lower()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".parquet")
        if not files:
            raise InputError(f"{name}: a directory without any .parquet file")
        return Source("parquet", files, [str(p) for p in files], fields)
    if not path.exists():
        raise InputError(f"{name}: no such file")
    if lower.endswith(JSONL_SUFFIXES):
        kind = "jsonl"
    elif lower.endswith(".parquet"):
        kind = "parquet"
    else:
        raise InputError(
            f"{name}: unknown input type; expected .jsonl, .ndjson (optionally .gz), "
            ".parquet, a directory of .parquet files, or - for standard input"
        )
    try:
        with path.open("rb") as probe:
            probe.read(1)
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if kind == "jsonl" and lower.endswith(".gz"):
        _check_gzip(path, name)
    return Source(kind, [path], [name], fields)


def _check_gzip(path: Path, name: str) -> None:
    try:
        with gzip.open(path, "rb") as handle:
            handle.read(1)
    except (OSError, EOFError) as exc:
        raise InputError(f"{name}: not a readable gzip file: {exc}") from None


def describe_bad(source: Source, rows: Sequence[Row]) -> tuple[BadRow, ...]:
    out = []
    for row in rows:
        name = source.names[row.file]
        if source.kind == "jsonl":
            out.append(BadRow(name, row.problem or "", line=row.at, field=row.field))
        else:
            out.append(BadRow(name, row.problem or "", row=row.at, field=row.field))
    return tuple(out)
