"""Prompts built from a row's fields: `--template` (Python's `{field}` syntax), `--template-file`
(a Jinja2 template, run in Jinja's sandbox) or, from Python, `prompt=` a callable taking the row.

A builder turns one row into the text of its user message, or raises RowProblem naming the field
it missed, so that a row it cannot build is a bad row like any other. It is called by every pass
over the input (the scan, the prompts to send, the output's `prompt` column), so it must give the
same text for the same row each time.

Why these two syntaxes: `{field}` is what a Python user already writes, with `{{` and `}}` for
literal braces, and it needs nothing installed. A template long enough for a file usually wants
conditions and loops (few-shot examples, optional fields), which is what Jinja2 is for: it is
the usual choice for prompt templates (Hugging Face chat templates, most eval tools), and its
sandbox keeps a template from reaching Python objects through a row's values. It stays an
optional extra, imported only when a template file is given.
"""

from __future__ import annotations

import functools
import json
import re
import string
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from batchpizza.errors import RowProblem, UsageError
from batchpizza.written import Written, WrittenFloat, plain

PromptFunction = Callable[[dict[str, Any]], str]
_MISSING = "is missing or null; the template reads it"
_EMPTY = "the template made an empty prompt"
# The longest prompt a row may ask, built or read: 16 Mi characters, as a JSONL line's 16 MiB.
# No served model reads a fraction of it (1M tokens is about 4,000,000 characters), so a longer
# one is a template or a field gone wrong, which would be sent, refused by the server and
# written into the checkpoint and the output.
MAX_PROMPT_CHARS = 16 * 1024 * 1024


def too_long(size: int, what: str = "prompt") -> str | None:
    """Why a prompt of `size` characters is refused, or None when it is not."""
    if size <= MAX_PROMPT_CHARS:
        return None
    return (
        f"the {what} is {size:,} characters, over the {MAX_PROMPT_CHARS:,} a prompt may have "
        "(no model reads that much: a million tokens is about 4,000,000 characters)"
    )


_CONVERSIONS: dict[str, Callable[[object], str]] = {"s": str, "r": repr, "a": ascii}


def unescape(template: str) -> str:
    """A template as typed on the command line: `\\n` a newline, `\\t` a tab, `\\\\` a backslash
    (a shell's single quotes keep them as typed); any other backslash stays as it is."""
    out: list[str] = []
    i = 0
    while i < len(template):
        char = template[i]
        if char == "\\" and i + 1 < len(template) and template[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[template[i + 1]])
            i += 2
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _text(value: Any) -> str:
    """A field's value as the prompt shows it: text as it is, other values as JSON (`true`,
    `[1, 2]`), what JSON cannot hold (a timestamp, a decimal) as Python prints it, a string
    inside a list or an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, _CONTAINERS):
        return _json(value)
    if isinstance(value, Written):  # a CSV cell: as the file wrote it
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


_CONTAINERS = (list, tuple, dict)


def _json(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> str:
    if _holds_written(value):
        return _json_as_written(value, sort_keys=False, ensure_ascii=False)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # a key JSON cannot hold, a circular value from Python
        return str(value)


def _tojson(value: Any, **kwargs: Any) -> str:
    """Jinja2's `tojson` filter's JSON: a CSV number as the file wrote it, as `{{ row }}` prints
    it, and a CSV time as its text; anything else as Jinja2 writes it (its keyword arguments:
    keys sorted)."""
    if _holds_written(value):
        return _json_as_written(
            value,
            sort_keys=bool(kwargs.get("sort_keys")),
            ensure_ascii=bool(kwargs.get("ensure_ascii", True)),
        )
    return json.dumps(value, **kwargs)


def _holds_written(value: Any) -> bool:
    if isinstance(value, Written):  # a time too: JSON has none, its text is written
        return True
    if isinstance(value, dict):
        return any(_holds_written(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_written(item) for item in value)
    return False


# A number as JSON writes one: a CSV cell's `.5`, `+2`, `1.` or `inf` is not one, and is
# written as the float it reads as instead (`0.5`, `2.0`, `1.0`, `-Infinity` as json writes it).
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def _json_as_written(value: Any, *, sort_keys: bool, ensure_ascii: bool) -> str:
    """JSON with each number read from a CSV cell as the file wrote it: json writes a float
    subclass as the float (`1.0` for the file's `1`, `2.5` for its `2.50`)."""
    if isinstance(value, WrittenFloat):
        text = str(value)
        return text if _JSON_NUMBER.fullmatch(text) else json.dumps(float(value))
    if isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        pairs = (
            json.dumps(str(k), ensure_ascii=ensure_ascii)
            + ": "
            + _json_as_written(v, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
            for k, v in items
        )
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, (list, tuple)):
        parts = (_json_as_written(v, sort_keys=sort_keys, ensure_ascii=ensure_ascii) for v in value)
        return "[" + ", ".join(parts) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii, default=str)


def _finalize(value: Any) -> Any:
    """What Jinja2 prints for a `{{ ... }}`: a whole list or object, a boolean or a null as
    JSON, as `{field}` does (`true`, `null`), not as Python prints them (`{'a': 1}`, `True`,
    `None`); filters, tests, loops and indexing before it see the real value."""
    if isinstance(value, _CONTAINERS):
        return _json(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return value


class FormatTemplate:
    """`--template 'Summarise: {title}\\n\\n{body}'`: each `{name}` is the row's field of that
    name, taken whole (a name is not split at dots or brackets); `{{` and `}}` are braces. A
    format spec after a colon applies to the value (`{score:.2f}`)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.key = "template:" + template
        self.required = True  # a table without one of the fields is refused whole
        parts: list[tuple[str, str | None, str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise UsageError(f"--template: {exc}; write a literal brace as {{{{ or }}}}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                if not name.strip() or name.isdigit():
                    raise UsageError(
                        "--template: every {} must name a field, e.g. {title} "
                        "(write a literal brace as {{ or }})"
                    )
                if spec and ("{" in spec or "}" in spec):
                    raise UsageError(f"--template: {{{name}:{spec}}}: a nested field is not read")
                if conversion not in (None, "s", "r", "a"):
                    raise UsageError(f"--template: {{{name}!{conversion}}}: use !s, !r or !a")
            parts.append((literal, name, spec or "", conversion))
        self.parts = parts
        self.reads: tuple[str, ...] | None = tuple(
            dict.fromkeys(name for _, name, _, _ in parts if name is not None)
        )
        if not self.reads:
            raise UsageError("--template names no field; a template reads fields: {title}")

    def __call__(self, row: Mapping[str, Any]) -> str:
        out: list[str] = []
        for literal, name, spec, conversion in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = row.get(name)
            if value is None:
                raise RowProblem(_MISSING, name)
            if conversion is not None:
                value = _CONVERSIONS[conversion](value)
            if spec:
                try:
                    out.append(format(value, spec))
                except (ValueError, TypeError) as exc:
                    raise RowProblem(f"cannot be formatted as {spec!r}: {exc}", name) from None
            else:
                out.append(_text(value))
        return _not_empty("".join(out))


def _not_empty(text: str) -> str:
    if not text.strip():
        raise RowProblem(_EMPTY)
    problem = too_long(len(text), "built prompt")
    if problem is not None:
        raise RowProblem(problem)
    return text


class FunctionPrompt:
    """`prompt=` from Python: a callable taking the row (a dict of its fields) and returning the
    prompt. Whatever it raises makes that row bad, with the exception's message."""

    reads: tuple[str, ...] | None = None  # it may read any field
    required = False

    def __init__(self, function: PromptFunction) -> None:
        self.function = function
        # A function's code cannot be compared across runs: a scan made with one is never
        # reused by another run (the plan still reuses every answer whose request is the same).
        self.key = "function:" + uuid.uuid4().hex

    def __call__(self, row: Mapping[str, Any]) -> str:
        try:
            # Python values, a CSV file's too (written.py): the function says how it prints them.
            text = self.function({k: plain(v) for k, v in row.items()})
        except KeyError as exc:
            name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
            if name is not None:
                raise RowProblem("is missing; prompt= reads it", name) from None
            raise RowProblem(f"prompt= raised KeyError: {exc}") from None
        except Exception as exc:  # any bug of the user's function is that row's problem
            raise RowProblem(f"prompt= raised {type(exc).__name__}: {exc}") from None
        if not isinstance(text, str):
            raise RowProblem(f"prompt= returned {type(text).__name__}, not a string")
        if not text.strip():
            raise RowProblem("prompt= returned an empty prompt")
        return _not_empty(text)


class JinjaTemplate:
    """`--template-file FILE`: a Jinja2 template over the row's fields (`{{ title }}`, and
    `{{ row["a field"] }}` for any name), in Jinja's immutable sandbox, an undefined field an
    error rather than an empty string (`{% if x is defined %}` tests for an optional one)."""

    required = False  # `{% if x is defined %}` may make a field optional

    def __init__(self, source: str, name: str) -> None:
        try:
            import jinja2  # noqa: F401
        except ImportError:
            raise UsageError(
                "--template-file needs Jinja2: pip install 'batchpizza[templates]'"
            ) from None
        self.source = source
        self.name = name
        self.key = "jinja:" + source
        self.template, self.reads = _compile(source, name)

    def __getstate__(self) -> dict[str, Any]:  # a Ray actor compiles its own
        return {"source": self.source, "name": self.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], state["name"])  # type: ignore[misc]

    def __call__(self, row: Mapping[str, Any]) -> str:
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        context = {k: v for k, v in row.items() if v is not None}  # null counts as absent
        context.setdefault("row", context.copy())
        try:
            text: str = self.template.render(context)
        except _missing_error() as exc:
            raise RowProblem(_MISSING, exc.field) from None  # type: ignore[attr-defined]
        except SecurityError as exc:
            raise RowProblem(f"the template did something the sandbox refuses: {exc}") from None
        except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as exc:
            raise RowProblem(f"the template failed: {type(exc).__name__}: {exc}") from None
        return _not_empty(text)


def _compile(source: str, name: str) -> tuple[Any, tuple[str, ...] | None]:
    from jinja2 import TemplateSyntaxError, meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=_missing_undefined(),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.policies["json.dumps_function"] = _tojson
    try:
        parsed = env.parse(source)
        template = env.from_string(parsed)
    except TemplateSyntaxError as exc:
        raise UsageError(f"--template-file {name}: line {exc.lineno}: {exc.message}") from None
    names = meta.find_undeclared_variables(parsed)
    # `row` reads any field: every column must then be read.
    reads = None if "row" in names else tuple(sorted(names))
    return template, reads


_CLASSES: dict[str, Any] = {}


def _missing_error() -> type[Exception]:
    _missing_undefined()
    error: type[Exception] = _CLASSES["error"]
    return error


def _missing_undefined() -> Any:
    """A StrictUndefined that says which name it missed (made once, Jinja imported lazily)."""
    if "undefined" not in _CLASSES:
        from jinja2 import StrictUndefined, UndefinedError
        from jinja2.utils import missing

        class MissingField(UndefinedError):
            def __init__(self, field: str | None, message: str | None) -> None:
                super().__init__(message)
                self.field = field

        class Missing(StrictUndefined):
            __slots__ = ()

            def __init__(
                self,
                hint: str | None = None,
                obj: Any = missing,
                name: str | None = None,
                exc: Any = UndefinedError,
            ) -> None:
                # What the sandbox refuses keeps its own error (SecurityError).
                if exc is UndefinedError:
                    exc = functools.partial(MissingField, name)
                super().__init__(hint, obj, name, exc=exc)

        _CLASSES["undefined"], _CLASSES["error"] = Missing, MissingField
    return _CLASSES["undefined"]


Builder = FormatTemplate | JinjaTemplate | FunctionPrompt


def builder_for(
    template: str | None,
    template_source: tuple[str, str] | None,
    function: PromptFunction | None,
) -> Builder | None:
    """The run's builder, or None when rows carry their own prompt or messages."""
    if template is not None:
        return FormatTemplate(template)
    if template_source is not None:
        return JinjaTemplate(template_source[1], template_source[0])
    if function is not None:
        return FunctionPrompt(function)
    return None
