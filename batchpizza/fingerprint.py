"""What identifies a request, so that an answer is reused only for the request it answers.

A request's fingerprint is two digests:

    identity  the provider's part, the same for every row of a run: the provider's name, the
              version of how it builds requests (Pizzagpt's prompt wrapping), the model and the
              body parameters (--param), as canonical JSON (key order, 1 and 1.0 do not matter)
    digest    the row's part: the prompt or messages as sent (an image's URL and detail, an
              audio's data: every content part), and an OpenAI Batch line's body

Never the API key, headers or the base URL: replicas of one server share answers, and another
server is the user's choice (named in the run's record). The row's part does not depend on the
provider, so the scan of an input (which holds it) is reused whatever the run asks with; a row
that is a prompt, or one user message without a body, has the digest of its text alone, which is
what checkpoints before fingerprints keyed answers by.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

# The version of this scheme: a checkpoint holding fingerprints of a later one is refused (its
# digests would mean something else here), never guessed at.
VERSION = 1
# The identity of answers kept from before fingerprints whose request is not known (an OpenAI-
# compatible run, whose parameters were not recorded): never a digest, so it never matches.
UNKNOWN = b"unknown"
# Body fields the run builds itself: a --param naming one is a usage error.
RESERVED_PARAMS = ("model", "messages", "stream")
# In the identity of a provider that sends only the formatted prompt (Pizzagpt): its requests are
# keyed by the text's digest, so rows whose messages format alike are one request.
BY_TEXT = {"request": "text"}
_MESSAGES = b"\x00messages\x00"  # prefix of a digest of messages and a body (never text's)


def _canonical(value: Any) -> Any:
    """`value` with every integral float as an int, so that 1 and 1.0 digest alike; raises
    TypeError for what JSON cannot hold."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{value} is not a finite number")
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"a key {key!r} that is not text")
            out[key] = _canonical(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    raise TypeError(f"a {type(value).__name__}, which JSON cannot hold")


def canonical_json(value: Any) -> bytes:
    """One spelling of `value` as JSON: sorted keys, no spaces, integral floats as integers.
    Raises TypeError for a value JSON cannot hold."""
    return json.dumps(
        _canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8", "surrogatepass")


def identity_digest(identity: Mapping[str, Any]) -> bytes:
    """The provider's part of every fingerprint of a run (see the module's docstring)."""
    return hashlib.blake2b(canonical_json({**identity, "fp": VERSION}), digest_size=16).digest()


def keyed_by_text(identity: Mapping[str, Any]) -> bool:
    return identity.get("request") == BY_TEXT["request"]


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def request_digest(
    text: str, messages: Sequence[Mapping[str, Any]] | None, body: Mapping[str, Any] | None
) -> bytes:
    """The row's part of its fingerprint: the digest of its text for a prompt, or one user
    message, without a body (most rows, and as cheap as it was); else of the messages and the
    body as canonical JSON."""
    if body is None and (
        messages is None
        or (
            len(messages) == 1
            and len(messages[0]) == 2  # a role and a content, no name
            and messages[0].get("role") == "user"
            and messages[0].get("content") == text
        )
    ):
        return text_digest(text)
    said = canonical_json({"messages": list(messages or ()), "body": body})
    return hashlib.blake2b(_MESSAGES + said, digest_size=16).digest()


def sample_digest(digest: bytes, sample: int) -> bytes:
    """The request key of sample `sample` of a request asked several times on purpose
    (--repeat): sample 0 is the request itself (so a run without --repeat answered it), each
    other one a key of its own."""
    if sample == 0:
        return digest
    return hashlib.blake2b(digest, digest_size=16, key=b"sample %d" % sample).digest()


def fingerprint(identity: bytes, digest: bytes) -> bytes:
    """Both parts as one key (a Ray part store's column)."""
    return hashlib.blake2b(digest, digest_size=16, key=identity).digest()


def describe_change(before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> str:
    """What differs between two identities, as the reasons for sending say it:
    `new model (model-A -> model-B)`, `new parameters (temperature 0.2 -> 0.9)`."""
    if before is None:
        return "new request (an answer from before fingerprints, its request unknown)"
    parts = []
    if before.get("provider") != now.get("provider"):
        parts.append(f"provider {before.get('provider')} -> {now.get('provider')}")
    elif before.get("format") != now.get("format"):
        parts.append(f"request format v{before.get('format')} -> v{now.get('format')}")
    if before.get("model") != now.get("model"):
        parts.append(f"model {_shown(before.get('model'))} -> {_shown(now.get('model'))}")
    old, new = before.get("params") or {}, now.get("params") or {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if _canonical(a) != _canonical(b):
            parts.append(f"{key} {_shown(a, key in old)} -> {_shown(b, key in new)}")
    had, has = before.get("schema"), now.get("schema")  # --schema's, when given
    if _canonical(had) != _canonical(has):
        parts.append(f"schema {'changed' if had and has else 'added' if has else 'dropped'}")
    if not parts:
        return "new request"
    if len(parts) == 1 and parts[0].startswith("model "):
        return f"new model ({parts[0][6:]})"
    return f"new request ({', '.join(parts)})"


def _shown(value: Any, present: bool = True) -> str:
    if not present or value is None:
        return "unset" if not present else "none"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."
