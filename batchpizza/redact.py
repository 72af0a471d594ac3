"""Removing credentials from every text batchpizza shows or writes.

Every message reaches the user through one of three doors: an exception's message (BatchpizzaError
redacts on construction), a log record (RedactingFilter on the package's handler), or the `error`
column (errors.describe). All three call `redact`, so a proxy password, a token in a URL or a
credential header named on the command line never leaks, whichever library produced the text.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"

# user:password@ in any URL-looking text, with or without a scheme.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
# query parameters and header-like pairs whose name says they carry a credential.
_CREDENTIAL_NAMES = r"(?:[a-z_-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|apikey|signature|cookie|credentials?))"
# In a query string, short names are common credentials too (?key=, ?auth=, ?sig=).
_PARAM = re.compile(
    rf"(?i)(?P<name>[?&;](?:{_CREDENTIAL_NAMES}|key|auth|sig|access|code)=)(?P<value>[^&#\s'\"]+)"
)
_HEADER = re.compile(
    rf"(?i)(?P<name>\b(?:authorization|proxy-authorization|x-api-key|{_CREDENTIAL_NAMES})"
    r"['\"]?\s*[:=]\s*['\"]?)(?P<value>(?:bearer\s+|basic\s+)?[^\s'\",}&]{6,})"
)

_known: set[str] = set()


def remember_url(url: str | None) -> None:
    """Register the credentials inside a URL the user gave, so they are masked wherever they appear
    (even where a library prints them decoded, or without the surrounding URL)."""
    if not url:
        return
    if "://" not in url and "@" in url:
        # No scheme (`user:password@host:port`, a common slip): urlsplit would not see the
        # user-info, so take it by hand.
        user, _, password = url.rpartition("@")[0].partition(":")
        for secret in (password, user if password else None):
            if secret and len(secret) >= 3:
                _known.update({secret, unquote(secret), quote(secret, safe="")})
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    # The user-info, and every query value: a URL the user gave may carry a token under any name.
    secrets = [parts.password, parts.username if parts.password else None]
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        # A credential-named parameter whatever its length; others when long enough to be a
        # token rather than a word (masking "eng" of ?lang=eng everywhere would garble text).
        if _PARAM.search(f"?{name}=x") or len(value) >= 8:
            secrets.append(value)
    for secret in secrets:
        if secret and len(secret) >= 3:
            _known.add(secret)
            _known.add(unquote(secret))
            _known.add(quote(secret, safe=""))


def remember_secret(value: str | None) -> None:
    """Register a secret given outside a URL (an API key), masked wherever it appears."""
    if value and len(value.strip()) >= 3:
        _known.add(value.strip())


def redact(text: str) -> str:
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _PARAM.sub(lambda m: f"{m['name']}{MASK}", text)
    text = _HEADER.sub(lambda m: f"{m['name']}{MASK}", text)
    for secret in sorted(_known, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message, so arguments formatted into it are covered too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
