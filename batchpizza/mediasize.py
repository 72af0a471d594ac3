"""What an image's or audio's own bytes say of its size, read from its header without decoding
it: an image's width and height (PNG, JPEG, GIF, WebP), a wav's length. Each is read as a
decoder would read the file, or at its largest where the header may say less than a decoder
makes of it (a GIF's frames past its screen, a wav's byte rate): a smaller size would let
--max-cost pass its cap (media.py bounds the tokens from it).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct

# A base64 data URL's start: its data follows (matched alone, never copied: it may be megabytes).
# Its scheme and `base64` in any case, as RFC 2397 has them (`DATA:...;BASE64,` is one too).
DATA_URL = re.compile(r"data:[\w.+/-]*(?:;[\w.+=-]+)*;base64,", re.IGNORECASE)


def _decoded(data: str, n: int, start: int = 0) -> bytes:
    """The first `n` bytes (about) of the base64 in `data` from `start`, without the rest."""
    chunk = data[start : start + -(-n // 3) * 4].strip()
    chunk = chunk[: len(chunk) // 4 * 4]
    try:
        return base64.b64decode(chunk, validate=False)
    except (binascii.Error, ValueError):
        return b""


def image_size(url: str) -> tuple[int, int] | None:
    """(width, height) from a base64 data URL's PNG, GIF, WebP or JPEG header; None when the
    URL is not one, or its header does not say."""
    match = DATA_URL.match(url)
    if match is None:
        return None
    start = match.end()
    head = _decoded(url, 64, start)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return _positive(*struct.unpack(">II", head[16:24]))
    if head[:6] in (b"GIF87a", b"GIF89a"):
        # A frame may reach past the screen the header says (a decoder, Pillow, grows the image
        # to it): every frame read, the whole file decoded (a 1x1 screen held a 2000 x 1000 one).
        return _gif_size(_decoded(url, (len(url) - start) * 3 // 4, start))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        # The frame header may follow large EXIF segments: read further only as needed.
        left = len(url) - start
        for chars in (4096, 65536 * 4, left):
            size = _jpeg_size(_decoded(url, chars * 3 // 4, start), whole=chars >= left)
            if size is not None or chars >= left:
                return size
    return None


# The bytes a GIF's next block starts with: an extension, an image, the trailer.
_GIF_BLOCK = re.compile(rb"[\x21\x2c\x3b]")


def _gif_size(data: bytes) -> tuple[int, int] | None:
    """The screen of a GIF grown to hold each of its frames (their image descriptors)."""
    if len(data) < 13:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    i = 13 + _color_table(data[10])
    while i < len(data) and data[i] != 0x3B:  # the trailer
        if data[i] == 0x21:  # an extension: its label, then its sub-blocks
            i = _after_sub_blocks(data, i + 2)
        elif data[i] == 0x2C and i + 10 <= len(data):  # an image descriptor
            left, top, w, h = struct.unpack("<HHHH", data[i + 1 : i + 9])
            width, height = max(width, left + w), max(height, top + h)
            # Its color table and LZW code size, then its data's sub-blocks.
            i = _after_sub_blocks(data, i + 10 + _color_table(data[i + 9]) + 1)
        else:  # bytes of no block: skipped, as a decoder skips them (at C speed: a megabyte)
            found = _GIF_BLOCK.search(data, i + 1)
            i = len(data) if found is None else found.start()
    return _positive(width, height)


def _color_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _after_sub_blocks(data: bytes, i: int) -> int:
    while i < len(data) and data[i]:
        i += data[i] + 1
    return i + 1


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return _positive(
            int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        )
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return _positive((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return _positive(width & 0x3FFF, height & 0x3FFF)
    return None


# The frame headers (SOF0-15 but DHT, JPG, DAC) and DHP, which Pillow reads as one too.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xDE}


def _jpeg_size(data: bytes, whole: bool) -> tuple[int, int] | None:
    """The largest frame header's size before the scan starts: Pillow takes the last one there
    (a small one first would have hidden a large one). None where `data` ends before the scan
    and is not `whole` (more of it is read), or the segments cannot be followed."""
    found: tuple[int, int] | None = None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker_ = data[i + 1]
        if marker_ == 0xFF:  # fill byte
            i += 1
            continue
        if marker_ in (0xDA, 0xD9):  # the scan, or the image's end: no frame header after
            return found
        if marker_ in _SOF and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            size = _positive(width, height)
            if size is None:  # a height said later (DNL): not known
                return None
            found = size if found is None else (max(found[0], width), max(found[1], height))
        if marker_ in (0xD8, 0x01) or 0xD0 <= marker_ <= 0xD7:
            i += 2
            continue
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return found if whole else None


def wav_seconds(data: str) -> float | None:
    """How long base64 wav `data` plays at most: all its bytes at the slowest rate its header
    says (a data chunk's own size is not trusted: a stream's says 0 or 0xFFFFFFFF). None when it
    is not a wav file of PCM samples with a rate."""
    head = _decoded(data, 512)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    i = 12
    while i + 8 <= len(head):
        chunk, size = head[i : i + 4], struct.unpack("<I", head[i + 4 : i + 8])[0]
        if chunk == b"fmt ":
            rate = _pcm_bytes_per_s(head[i + 8 : i + 8 + size])
            return None if rate is None else (len(data) * 3 // 4) / rate
        i += 8 + size + (size & 1)
    return None


# PCM, IEEE float, A-law, mu-law: a sample's bytes are fixed, so its length is its bytes' count.
_PCM_CODES = frozenset({1, 3, 6, 7})
_EXTENSIBLE = 0xFFFE


def _pcm_bytes_per_s(fmt: bytes) -> float | None:
    """The fewest bytes a second of a wav's fmt chunk says, of its byte rate, its frames at its
    block size and at its sample bits: a decoder reads the length from the sample rate and
    sizes, never from the byte rate, which a file may say anything in (0xFFFFFFFF: 60 s of
    audio would be bounded at a token). None for compressed audio (ADPCM, MP3 in a wav), whose
    length cannot be read without decoding it, or a header that says no rate."""
    if len(fmt) < 16:
        return None
    code, channels, sample_rate, byte_rate, block, bits = struct.unpack("<HHIIHH", fmt[:16])
    if code == _EXTENSIBLE:
        code = struct.unpack("<H", fmt[24:26])[0] if len(fmt) >= 26 else 0
    if code not in _PCM_CODES:
        return None
    rates = [byte_rate, sample_rate * block, sample_rate * channels * bits / 8]
    positive = [rate for rate in rates if rate > 0]
    return min(positive) if positive else None
