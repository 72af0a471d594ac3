"""Providers: one prompt in, one Answer out, or a typed ProviderError.

The runner calls a provider through `Provider` and never knows which one it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from batchpizza.records import Answer, Prompt


class Provider(Protocol):
    name: str
    model: str | None  # recorded for rows that failed, where no reply named one
    # Result columns this provider adds after the common ones (e.g. token counts).
    extra_columns: tuple[str, ...]
    # HTTP statuses after which no further request can succeed (a wrong key): the run stops.
    fatal_statuses: frozenset[int]
    # Whether a reply's text is checked for the service's refusal phrases.
    detects_refusals: bool

    @property
    def identity(self) -> Mapping[str, Any]:
        """What of every request this provider builds decides its answer: its name, the version
        of how it builds requests (bumped when that changes, so answers are asked again), the
        model and the body parameters. Never the key, the headers or the URL (see fingerprint)."""
        ...

    async def ask(self, session: aiohttp.ClientSession, prompt: Prompt) -> Answer:
        """Send one prompt; raise a ProviderError subclass on any failure."""
        ...

    def preview(self, prompt: Prompt) -> tuple[str, dict[str, str], bytes]:
        """(URL, headers with secrets masked, body) of the request `ask` would send."""
        ...
