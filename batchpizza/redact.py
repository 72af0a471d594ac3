"""Removing credentials from every text batchpizza shows or writes, and making a server's text
harmless on a terminal.

Every message reaches the user through one of three doors: an exception's message (BatchpizzaError
redacts on construction), a log record (RedactingFilter on the package's handler), or the `error`
column (errors.describe). All three call `redact`, so a proxy password, a token in a URL or a
credential header named on the command line never leaks, whichever library produced the text.
A server's text is shortened only by `shorten`, which masks before it cuts: a cut inside a secret
leaves a first part that neither a pattern nor a known secret matches any more.

`inert` is the one door to a terminal for text a server controls (log lines, the report, error
messages): escape sequences and other control characters are shown, not obeyed.
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
# Room past a cut for a secret that starts before it to be seen whole by `redact`: the longest
# known secret plus this much for the patterns' (a credential header's name and value).
_PATTERN_ROOM = 256


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


def shorten(text: str, limit: int, tail: str = "") -> str:
    """`text` on one line with its secrets masked, then cut to at most `limit` characters (`tail`
    included, added where a cut was made). Only the start is masked, with room past the cut for
    any secret that begins before it: an 8 MiB error page costs milliseconds, not seconds."""
    room = limit + _PATTERN_ROOM + max(map(len, _known), default=0)
    window = 4 * room
    while True:
        flat = " ".join(text[:window].split())
        if len(flat) >= room or window >= len(text):
            break
        window *= 4  # mostly whitespace: widen until the flattened start is long enough
    masked = redact(flat[:room])
    if len(masked) <= limit and len(flat) <= room and window >= len(text):
        return masked
    return masked[: max(0, limit - len(tail))] + tail


# C0 controls but the line feed and tab, DEL, and C1 controls (\x9b is a CSI on its own to many
# terminals): each shown as its escape, so ESC ] 0 ; title BEL is text, not a window title.
_INERT = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_INERT_ONE_LINE = {**_INERT, 0x0A: "\\n"}


def inert(text: str, *, lines: bool = False) -> str:
    """`text` as it may be shown on a terminal: no escape sequence (colours, screen clears,
    window titles, clipboard writes, hyperlinks) or other control character is left to act, and
    no NUL reaches a file. Line feeds are kept when `lines` (a message of several lines)."""
    return text.translate(_INERT if lines else _INERT_ONE_LINE)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message, so arguments formatted into it are covered too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class Secret:
    """A string that shows as *** in any repr or str, so that printing the provider, its vars or
    a traceback's locals never shows the key."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<secret {MASK}>"

    __str__ = __repr__
