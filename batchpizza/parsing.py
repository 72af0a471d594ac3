"""How option values are read: rates, durations, output formats, URLs and body parameters.
Each raises UsageError naming the option, so the CLI and the Python API refuse alike."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from batchpizza.errors import UsageError
from batchpizza.numbers import decimal, is_number, strip

DEFAULT_AUTO_MAX = 20.0  # --rate auto without a MAX: a ceiling polite to a free service

OUTPUT_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
_PERIODS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
# The number is read by numbers.decimal: ASCII digits only.
_RATE = re.compile(r"(?P<n>[^\s/]+)(?:\s*/\s*(?P<per>[a-z]+))?", re.IGNORECASE | re.ASCII)


def parse_rate(value: str | float | int) -> float:
    """`5`, `5/s`, `300/min`, `1000/h` -> requests per second; 0 means unlimited."""
    if is_number(value):
        rate = float(value)
    else:
        match = _RATE.fullmatch(strip(str(value)))
        per = (match["per"] or "s").lower() if match else ""
        number = decimal(match["n"]) if match else None
        if number is None or per not in _PERIODS:
            raise UsageError(
                f"--rate {value!r}: expected a number (digits 0-9) per s, min or h, e.g. 5/s "
                "or 300/min"
            )
        rate = number / _PERIODS[per]
    if not math.isfinite(rate) or rate < 0:
        raise UsageError(f"--rate {value!r}: must be 0 (unlimited) or a positive rate")
    return rate


def output_format(path: str, chosen: str | None = None) -> str:
    suffix = Path(path).suffix.lower()
    if chosen == "openai-batch":
        if suffix != ".jsonl":
            raise UsageError(f"output {path!r}: --format openai-batch writes a .jsonl file")
        return chosen
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"output {path!r}: the extension must be .parquet or .jsonl")
    if chosen is not None and chosen != OUTPUT_FORMATS[suffix]:
        raise UsageError(f"output {path!r}: --format {chosen} does not match the extension")
    return OUTPUT_FORMATS[suffix]


_DURATION = re.compile(r"(?P<n>\S+?)(?:\s*(?P<unit>ms|s|m|h|d))?", re.IGNORECASE | re.ASCII)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int, option: str) -> float:
    """`90`, `90s`, `50m`, `2h` -> seconds."""
    if is_number(value):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(strip(str(value)))
        number = decimal(match["n"]) if match else None
        if match is None or number is None:
            raise UsageError(
                f"{option} {value!r}: expected a duration in digits 0-9 such as 90, 90s, 50m or 2h"
            )
        seconds = number * _UNITS[(match["unit"] or "s").lower()]
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"{option} {value!r}: must be 0 or more")
    return seconds


def parse_rate_option(value: str | float | int) -> tuple[float, float | None]:
    """--rate: (fixed requests/s, None) or (0, MAX) for `auto[:MAX]`."""
    if isinstance(value, str):
        value = strip(value)
    if isinstance(value, str) and value.lower().startswith("auto"):
        rest = value[4:]
        if not rest:
            return 0.0, DEFAULT_AUTO_MAX
        if not rest.startswith(":"):
            raise UsageError(f"--rate {value!r}: expected auto or auto:MAX, e.g. auto:20/s")
        ceiling = parse_rate(rest[1:])
        if ceiling <= 0:
            raise UsageError(f"--rate {value!r}: the MAX of auto must be a positive rate")
        return 0.0, ceiling
    return parse_rate(value), None


def _shown(url: str) -> str:
    """A URL as an error may show it: whatever precedes an @ (user and password, even without a
    scheme) masked."""
    if "@" not in url:
        return url
    head, _, tail = url.rpartition("@")
    scheme = head.split("://", 1)[0] + "://" if "://" in head else ""
    return f"{scheme}***@{tail}"


def check_url(value: str, option: str) -> None:
    """A usage error, before anything is read or sent, for a URL that could never be used."""
    from yarl import URL

    shown = _shown(value)
    if not value.lower().startswith(("http://", "https://")):
        raise UsageError(f"{option} {shown!r}: must start with http:// or https://")
    try:
        url = URL(value)
        if not url.host or url.port is None:
            raise ValueError("no host")
    except (ValueError, TypeError) as exc:
        detail = str(exc).replace(value, shown) if "@" not in str(exc) else "malformed"
        raise UsageError(f"{option} {shown!r}: not a usable URL ({detail})") from None


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """--param KEY=VALUE, VALUE read as JSON where it parses (numbers, booleans, objects), else
    kept as text."""
    import json

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE, e.g. temperature=0")
        try:
            params[key.strip()] = json.loads(value)
        except ValueError:
            params[key.strip()] = value
    return params


def _non_finite(value: object) -> float | None:
    """The first NaN or infinity anywhere inside a parameter's value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _non_finite(item)
            if found is not None:
                return found
    return None


def check_params(params: dict[str, Any]) -> None:
    """A usage error for a parameter JSON cannot carry: NaN and the infinities (`--param
    temperature=NaN`, `1e400`, or a float from Python) would be sent as null, silently."""
    from batchpizza.fingerprint import RESERVED_PARAMS, canonical_json

    for key, value in params.items():
        if key in RESERVED_PARAMS:
            why = {
                "model": "give the model with --model",
                "messages": "the messages come from each row",
                "stream": "streamed replies are not supported; drop it",
            }[key]
            raise UsageError(f"--param {key}: the run sets this field itself; {why}")
        found = _non_finite(value)
        if found is not None:
            raise UsageError(
                f"--param {key}: {found} is not a finite number, and JSON cannot carry it "
                "(it would be sent as null); give a finite number"
            )
        try:
            canonical_json(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"--param {key}: not a JSON value ({exc}); give text, a number, a boolean, "
                "a list or an object"
            ) from None
