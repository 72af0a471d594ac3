"""Content parts that are not text (OpenAI's `image_url` and `input_audio`): which are sent,
what they may cost in tokens, and how they are shown without their data.

A chat message's content may be a list of parts. Text parts alone are joined into one text, as
before; a list with an image or audio is sent as it is, in order. What a server bills for such a
part cannot be counted from its bytes as text is (tokencount.py), so each is bounded from above
by OpenAI's published rules, for --max-cost's reservation and --tpm's booking.

The rules (written from memory of OpenAI's vision and audio documentation, as of 2025; there is
no internet here to check them, so every figure is taken at its worst where memory was unsure):

    tiles    gpt-4o, gpt-4.1, gpt-4.5, gpt-4-turbo: 85 + 170 per 512-px tile; gpt-4o-mini:
             2,833 + 5,667 per tile; o1, o3: 75 + 150 per tile. `detail: low` costs the base
             alone; high (and `auto`, which may choose high) scales the image to fit 2048 x 2048,
             then its shortest side to 768 px, and counts 512-px tiles: at most 8 (768 x 2048).
    patches  gpt-4.1-mini, gpt-4.1-nano, o4-mini: 32-px patches, at most 1,536 (a larger image
             is scaled down to fit), times the model's multiplier (1.62, 2.46, 1.72).
    audio    about one token per 100 ms of input audio; reserved here as one per 25 ms.

An image's size is read from a data URL's header (PNG, JPEG, GIF, WebP: mediasize.py), never by
decoding the image; an image at a URL, or one whose header does not say, takes the model's worst
case. A model the table does not know takes the largest bound of those it does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from batchpizza.errors import RowProblem
from batchpizza.mediasize import DATA_URL, image_size, wav_seconds

IMAGE, AUDIO = "image_url", "input_audio"
DETAILS = ("low", "high", "auto")
# What a part adds beyond its own tokens (the part's wrapping in the chat template).
PART_OVERHEAD = 8
# Audio: one token per 25 ms (four times the documented rate, which could not be checked here).
AUDIO_TOKENS_PER_S = 40
_TILE = 512
_MAX_TILES = 8  # 768 x 2048 after scaling: 2 x 4 tiles
_PATCH = 32
_MAX_PATCHES = 1536
# A data URL shown in a dry run or a log: its start, then how long it was.
_SHOWN_DATA = 5


@dataclass(frozen=True)
class Tiles:
    base: int
    per_tile: int

    def tokens(self, size: tuple[int, int] | None, detail: str) -> int:
        if detail == "low":
            return self.base
        return self.base + self.per_tile * (_MAX_TILES if size is None else _tiles(*size))


@dataclass(frozen=True)
class Patches:
    multiplier: float

    def tokens(self, size: tuple[int, int] | None, detail: str) -> int:
        # Patch-based models are not known to honour `detail`: counted as at full detail.
        patches = _MAX_PATCHES
        if size is not None:
            patches = min(_MAX_PATCHES, -(-size[0] // _PATCH) * -(-size[1] // _PATCH))
        return math.ceil(patches * self.multiplier)


Rule = Tiles | Patches
# By the model's name, the longest prefix first matching (gpt-4o-mini before gpt-4o).
RULES: dict[str, Rule] = {
    "gpt-4o-mini": Tiles(2833, 5667),
    "gpt-4o": Tiles(85, 170),
    "chatgpt-4o": Tiles(85, 170),
    "gpt-4.1-mini": Patches(1.62),
    "gpt-4.1-nano": Patches(2.46),
    "gpt-4.1": Tiles(85, 170),
    "gpt-4.5": Tiles(85, 170),
    "gpt-4-turbo": Tiles(85, 170),
    "o1": Tiles(75, 150),
    "o3": Tiles(75, 150),
    "o4-mini": Patches(1.72),
}
_BY_LENGTH = sorted(RULES, key=len, reverse=True)


def rule_of(model: str | None) -> Rule | None:
    """The image rule of `model` (a dated name as its family's; a gateway's `openai/gpt-4o`
    as `gpt-4o`); None for a model the table does not know."""
    if not model:
        return None
    name = model.rsplit("/", 1)[-1].lower()
    for prefix in _BY_LENGTH:
        if name.startswith(prefix):
            return RULES[prefix]
    return None


def _tiles(width: int, height: int) -> int:
    """512-px tiles of an image at high detail. Whether an image whose shortest side is under
    768 px is scaled up to it was not sure from memory: both ways are counted, the larger kept."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    short = min(w, h)
    if short <= 0:
        return _MAX_TILES
    counts = [math.ceil(w * 768 / short / _TILE) * math.ceil(h * 768 / short / _TILE)]
    if short < 768:
        counts.append(math.ceil(w / _TILE) * math.ceil(h / _TILE))
    return min(_MAX_TILES, max(counts))


def image_tokens(size: tuple[int, int] | None, detail: str, model: str | None) -> int:
    """The most tokens an image of `size` (None: not known) at `detail` may be billed by
    `model`; an unknown model's, the most of any known model's."""
    rule = rule_of(model)
    if rule is not None:
        return rule.tokens(size, detail)
    return max(r.tokens(size, detail) for r in RULES.values())


# -- reading a part ------------------------------------------------------------------------------


def checked_part(part: Mapping[str, Any], where: str, name: str, text_only: bool) -> dict[str, Any]:
    """A part that is not text, as it is sent (null fields left out: a Parquet struct's absent
    ones), or RowProblem: an unknown type, a shape that is not OpenAI's, audio whose length
    cannot be read, or any of them for a provider that sends text alone."""
    kind = part.get("type")
    if kind not in (IMAGE, AUDIO):
        raise RowProblem(
            f"{where} is of type {kind!r}, which is not sent: only 'text', 'image_url' and "
            "'input_audio' parts are (what an unknown part costs cannot be bounded)",
            name,
        )
    if text_only:
        raise RowProblem(
            f"{where} is {'an image' if kind == IMAGE else 'audio'} ({kind!r}): Pizzagpt takes "
            "text alone; send such rows with --provider openai to a model that reads them",
            name,
        )
    clean: dict[str, Any] = without_nulls(part)
    inner = clean.get(kind)
    if not isinstance(inner, dict):
        raise RowProblem(f"{where} ({kind!r}) has no {kind!r} object", name)
    if kind == IMAGE:
        url = inner.get("url")
        if not isinstance(url, str) or not url:
            raise RowProblem(f"{where} has no image_url.url string", name)
        detail = inner.get("detail", "auto")
        if detail not in DETAILS:
            raise RowProblem(f"{where}: image_url.detail must be low, high or auto", name)
        return clean
    data, fmt = inner.get("data"), inner.get("format")
    if not isinstance(data, str) or not data:
        raise RowProblem(f"{where} has no input_audio.data string (base64)", name)
    if fmt != "wav":
        raise RowProblem(
            f"{where}: input_audio format {fmt!r}: only wav is sent, whose header says its "
            "length (the tokens of other formats cannot be bounded without decoding them)",
            name,
        )
    if wav_seconds(data) is None:
        raise RowProblem(
            f"{where}: input_audio data is not base64 of a wav file of PCM samples (a "
            "compressed one's length cannot be read without decoding it)",
            name,
        )
    return clean


def without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def marker(part: Mapping[str, Any]) -> str:
    """What stands for a part that is not text in the row's formatted text: `[image: URL]`
    (a data URL shortened), `[audio: wav, 2.5 s]`."""
    if part.get("type") == IMAGE:
        return f"[image: {shown_url(part[IMAGE]['url'])}]"
    seconds = wav_seconds(part[AUDIO]["data"]) or 0.0
    return f"[audio: wav, {seconds:.1f} s]"


# -- the tokens of a request's parts --------------------------------------------------------------


def parts_tokens(content: Iterable[Any], model: str | None) -> tuple[int, str]:
    """(the bound of a content list's parts that are not text, with their overhead; its text
    parts joined): what tokencount needs of a message whose content is a list."""
    tokens, texts = 0, []
    for part in content:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type", "text")
        if kind == "text":
            text = part.get("text")
            texts.append(text if isinstance(text, str) else "")
            continue
        tokens += PART_OVERHEAD + part_tokens(part, model)
    return tokens, "".join(texts)


def part_tokens(part: Mapping[str, Any], model: str | None) -> int:
    kind = part.get("type")
    inner = part.get(kind) if isinstance(kind, str) else None
    if kind == IMAGE and isinstance(inner, Mapping):
        url, detail = inner.get("url"), inner.get("detail", "auto")
        size = image_size(url) if isinstance(url, str) else None
        return image_tokens(size, detail if detail in DETAILS else "high", model)
    if kind == AUDIO and isinstance(inner, Mapping) and isinstance(inner.get("data"), str):
        seconds = wav_seconds(inner["data"])
        if seconds is not None:
            return math.ceil(seconds * AUDIO_TOKENS_PER_S)
    # Never one a row holds (checked_part refuses it): a Batch API line's, counted as its bytes.
    return len(str(part).encode("utf-8", "surrogatepass"))


# -- showing a request ----------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """A data URL as a dry run or a log shows it: `data:image/png;base64,iVBOR...(123,456
    chars)`; any other URL as it is."""
    match = DATA_URL.match(url)
    start = -1 if match is None else match.end()
    if match is None or len(url) - start <= _SHOWN_DATA:
        return url
    return f"{url[: start + _SHOWN_DATA]}...({len(url) - start:,} chars)"


def shown_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A request body as shown: each image's data URL and each audio's data shortened."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return dict(body)
    return {**body, "messages": [_shown_message(m) for m in messages]}


def _shown_message(message: Any) -> Any:
    content = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(content, list):
        return message
    return {**message, "content": [_shown_part(p) for p in content]}


def _shown_part(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return part
    inner = part.get(part.get("type"))
    if (
        part.get("type") == IMAGE
        and isinstance(inner, Mapping)
        and isinstance(inner.get("url"), str)
    ):
        return {**part, IMAGE: {**inner, "url": shown_url(inner["url"])}}
    if (
        part.get("type") == AUDIO
        and isinstance(inner, Mapping)
        and isinstance(inner.get("data"), str)
    ):
        data = inner["data"]
        if len(data) > _SHOWN_DATA:
            return {
                **part,
                AUDIO: {**inner, "data": f"{data[:_SHOWN_DATA]}...({len(data):,} chars)"},
            }
    return part
