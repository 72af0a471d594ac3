"""Each provider's identity (see batchpizza.fingerprint): what every request of a run decides its
answer by, made from the run's options alone. Apart from the providers, which import their HTTP
client (aiohttp, 0.1 s and 15 MB): `status` and `report` name the runs of a checkpoint of schema
2 by the identities they asked with, and a Ray driver plans with one, without a provider."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.config import DEFAULT_MODEL
from batchpizza.fingerprint import BY_TEXT

if TYPE_CHECKING:
    from batchpizza.structured import Structured

# How the OpenAI provider builds a request body from a row and the options (see OpenAIAPI.body):
# a change re-asks every answer, through the fingerprint's identity.
OPENAI_FORMAT = 1
# How the Pizzagpt provider builds a request from a row (the site's {"question": prompt}
# wrapping, messages formatted by format_prompt): likewise.
PIZZAGPT_FORMAT = 1


def openai_identity(
    model: str | None, params: Mapping[str, Any], structured: Structured | None = None
) -> dict[str, Any]:
    """What every request of an OpenAI-compatible run decides its answer by."""
    found = {"provider": "openai", "format": OPENAI_FORMAT, "model": model or None,
             "params": dict(params)}  # fmt: skip
    return found if structured is None else {**found, **structured.identity()}


def pizzagpt_identity(structured: Structured | None = None) -> dict[str, Any]:
    """What every Pizzagpt request decides its answer by: the one model, and the version of the
    wrapping; there are no parameters, and only the formatted prompt is sent (with --schema,
    the schema asked for in it)."""
    found = {"provider": "pizzagpt", "format": PIZZAGPT_FORMAT, "model": DEFAULT_MODEL, **BY_TEXT}
    return found if structured is None else {**found, **structured.identity()}


def identity_of(
    provider: str,
    model: str | None,
    params: Mapping[str, Any],
    structured: Structured | None = None,
) -> dict[str, Any]:
    """The identity of the named provider's requests with this model, these parameters and this
    schema, as its `identity` says it, without building it."""
    if provider == "openai":
        return openai_identity(model, params, structured)
    return pizzagpt_identity(structured)
