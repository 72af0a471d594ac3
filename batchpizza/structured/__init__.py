"""Structured outputs: a run's JSON Schema sent with every request (OpenAI's `response_format`,
or an instruction in a Pizzagpt prompt), every answer validated and re-asked when it does not fit,
and the parsed values written as typed columns. The engine and providers hold a `Structured`."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchpizza.records import NOT_VALIDATED, Answer, Prompt, Result
from batchpizza.structured import answers
from batchpizza.structured import schema as schemas

__all__ = ["INVALID_OUTPUT", "NOT_VALIDATED", "REQUEST_FORMAT", "Structured", "with_tokens_of"]

INVALID_OUTPUT = "invalid_output"  # a row's finish_reason, an attempt's outcome
# How a schema is put into a request (the instruction, the response_format): a change re-asks.
REQUEST_FORMAT = 1
DEFAULT_SCHEMA_RETRIES = 2


@dataclass(frozen=True)
class Structured:
    """A run's schema, checked, with what every stage asks of it."""

    schema: Mapping[str, Any]
    retries: int = DEFAULT_SCHEMA_RETRIES

    @functools.cached_property
    def _validate(self) -> Callable[[Any], Any]:
        return schemas.compile_validator(dict(self.schema))

    def identity(self) -> dict[str, Any]:
        """The fingerprint's part of the schema: a changed schema asks every row again."""
        return {"schema": dict(self.schema), "schema_format": REQUEST_FORMAT}

    def response_format(self) -> dict[str, Any]:
        return schemas.response_format(self.schema)

    @functools.cached_property
    def _instruction(self) -> str:
        return answers.instruction(self.schema)  # made once: 10 us a request otherwise

    def instructed(self, text: str) -> str:
        return text + self._instruction

    @functools.cached_property
    def overhead(self) -> tuple[int, int]:
        """(bound, estimate) of the input tokens the schema adds to every request: the server
        counts the `response_format` (OpenAI) or the instruction (Pizzagpt) as input. The bound
        is the larger's UTF-8 bytes (tokencount's rule), the estimate a quarter of its
        characters."""
        import json

        from batchpizza.tokencount import text_tokens

        sent = json.dumps(self.response_format(), separators=(",", ":"), ensure_ascii=False)
        longer = max(sent, self._instruction, key=len)
        return len(longer.encode("utf-8", "surrogatepass")), text_tokens(self._instruction)

    def value(self, text: str) -> Any:
        """The JSON value of an answer that fitted when it came (see ParsedColumns.values)."""
        try:
            return answers.extract(text)
        except answers.NoJSON:
            return None

    def check(self, text: str) -> tuple[Any, str | None]:
        """(the answer's value, None) when it fits; else (None, the error)."""
        return answers.validation_error(text, self._validate)

    def follow_up(self, prompt: Prompt, answer: str, error: str) -> Prompt:
        return answers.follow_up(prompt, answer, error)


def with_tokens_of(earlier: Answer, later: Answer | Result) -> Answer | Result:
    """`later` (a re-ask's answer, or the row's failure) with the tokens of `earlier` added: a
    row's token columns count every request sent for it, re-asks too."""

    def plus(a: int | None, b: int | None) -> int | None:
        return None if a is None and b is None else (a or 0) + (b or 0)

    return later._replace(
        prompt_tokens=plus(earlier.prompt_tokens, later.prompt_tokens),
        completion_tokens=plus(earlier.completion_tokens, later.completion_tokens),
    )
