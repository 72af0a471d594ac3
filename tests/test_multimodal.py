"""Images and audio in a chat message's content (`--provider openai`): sent as the row holds
them, told apart by the fingerprint, bounded for --max-cost and --tpm, shown shortened."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sqlite3
import struct
import threading
import wave
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchpizza.cli import cli
from batchpizza.controls.budget import Budget
from batchpizza.controls.metering import Meter
from batchpizza.errors import RowProblem
from batchpizza.media import image_tokens, shown_url
from batchpizza.mediasize import image_size, wav_seconds
from batchpizza.mock.faults import MockConfig
from batchpizza.pricing import Price
from batchpizza.rows import Fields, digest_of, interpret, to_prompt
from batchpizza.tokencount import input_bound, input_estimate, messages_bound
from tests.conftest import read_jsonl, write_jsonl

FIELDS = Fields("prompt", "messages", "id", False, False, False)
PIZZAGPT = Fields("prompt", "messages", "id", False, False, False, text_only=True)
CAT = "https://example.com/cat.png"


def png(width: int, height: int, pad: int = 2000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + crc + b"\0" * pad


def data_url(image: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"


def wav(seconds: float, rate: int = 16000) -> str:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(rate * seconds))
    return base64.b64encode(out.getvalue()).decode()


def image(url: str, detail: str | None = None) -> dict[str, Any]:
    inner = {"url": url, **({"detail": detail} if detail else {})}
    return {"type": "image_url", "image_url": inner}


def row(rid: str, *parts: dict[str, Any]) -> dict[str, Any]:
    text = {"type": "text", "text": "What is in this picture?"}
    return {"id": rid, "messages": [{"role": "user", "content": [text, *parts]}]}


def prompt_of(obj: dict[str, Any], fields: Fields = FIELDS) -> Any:
    return to_prompt(interpret(obj, fields, 0))


# -- what is sent -------------------------------------------------------------------------------


def test_a_row_with_an_image_keeps_its_parts_in_order_text_parts_too() -> None:
    parts = [
        {"type": "text", "text": "Compare"},
        image(CAT, "low"),
        {"type": "text", "text": "with"},
        image("https://example.com/dog.png"),
    ]
    prompt = prompt_of({"id": "a", "messages": [{"role": "user", "content": parts}]})
    assert prompt.messages == ({"role": "user", "content": parts},)
    # The text says what the row holds, each image a short marker.
    assert prompt.text == f"Compare\n[image: {CAT}]\nwith\n[image: https://example.com/dog.png]"


def test_a_content_of_text_parts_alone_is_still_sent_joined_as_one_text() -> None:
    # Its request (and so its fingerprint) is what it was: a rerun sends none of them again.
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    prompt = prompt_of({"id": "a", "messages": [{"role": "user", "content": parts}]})
    assert prompt.messages == ({"role": "user", "content": "a\nb"},)


def test_null_fields_of_a_part_are_left_out_as_a_parquet_struct_holds_them() -> None:
    part = {"type": "image_url", "text": None, "image_url": {"url": CAT, "detail": None}}
    text = {"type": "text", "text": "hi", "image_url": None}
    prompt = prompt_of({"id": "a", "messages": [{"role": "user", "content": [text, part]}]})
    assert prompt.messages[0]["content"] == [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": CAT}},
    ]


@pytest.mark.parametrize(
    "part",
    [image(CAT), {"type": "input_audio", "input_audio": {"data": wav(0.1), "format": "wav"}}],
)
def test_under_pizzagpt_a_row_with_an_image_or_audio_is_a_bad_row_saying_why(
    part: dict[str, Any],
) -> None:
    with pytest.raises(RowProblem) as info:
        interpret(row("a", part), PIZZAGPT, 0)
    assert "Pizzagpt takes text alone" in info.value.problem
    assert "--provider openai" in info.value.problem
    assert info.value.id == "a"


def test_pizzagpt_and_openai_runs_do_not_share_a_scan() -> None:
    # A scan that found the row good for openai must not serve a Pizzagpt run.
    assert FIELDS.key() != PIZZAGPT.key()


def test_an_unknown_part_type_is_a_bad_row_naming_the_type() -> None:
    with pytest.raises(RowProblem, match="'input_video'"):
        interpret(row("a", {"type": "input_video", "input_video": {}}), FIELDS, 0)


# -- the fingerprint ---------------------------------------------------------------------------


def test_rows_differing_only_in_an_image_are_two_requests_identical_ones_one() -> None:
    def digest(*parts: dict[str, Any]) -> bytes:
        return digest_of(prompt_of(row("a", *parts)))

    cat = digest(image(CAT))
    assert cat == digest(image(CAT))
    assert cat != digest(image("https://example.com/dog.png"))
    assert cat != digest(image(CAT, "low"))
    assert digest(image(CAT, "low")) != digest(image(CAT, "high"))
    assert digest(image(data_url(png(10, 10)))) != digest(image(data_url(png(10, 11))))
    # Not the digest of its text alone (what a text-only request with the same words has).
    same_words = {"id": "b", "prompt": prompt_of(row("a", image(CAT))).text}
    assert cat != digest_of(prompt_of(same_words))


# -- the token bounds ---------------------------------------------------------------------------


def test_an_image_size_is_read_from_a_data_urls_header() -> None:
    assert image_size(data_url(png(1024, 768))) == (1024, 768)
    gif = b"GIF89a" + struct.pack("<HH", 300, 200) + b"\0" * 40
    assert image_size(data_url(gif, "gif")) == (300, 200)
    exif = b"\xff\xe1" + struct.pack(">H", 30000) + b"\0" * 29998  # a large EXIF first
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 480, 640) + b"\0" * 10
    scan = b"\xff\xda" + struct.pack(">H", 8) + b"\0" * 30
    assert image_size(data_url(b"\xff\xd8" + exif + sof + scan, "jpeg")) == (640, 480)
    vp8x = b"RIFF\0\0\0\0WEBPVP8X" + struct.pack("<I", 10) + b"\0" * 4
    vp8x += (799).to_bytes(3, "little") + (599).to_bytes(3, "little")
    assert image_size(data_url(vp8x, "webp")) == (800, 600)
    assert image_size(CAT) is None
    assert image_size(data_url(b"not an image at all")) is None


def gif(screen: tuple[int, int], *frames: tuple[int, int, int, int]) -> bytes:
    """A GIF of a `screen` (no color table) and frames (left, top, width, height) of one pixel's
    data each, a graphic control extension and a stray byte before each."""
    out = b"GIF89a" + struct.pack("<HHBBB", *screen, 0, 0, 0)
    for frame in frames:
        out += b"\x21\xf9\x04\0\0\0\0\0" + b"\x07"  # an extension, then a byte of no block
        out += b"\x2c" + struct.pack("<HHHHB", *frame, 0) + b"\x02\x02\x4c\x01\0"
    return out + b"\x3b"


def test_a_gifs_size_holds_its_frames_where_they_pass_the_screen_it_says() -> None:
    # Pillow, as a server decodes it, makes such an image 2000 x 1000, not 1 x 1.
    lying = data_url(gif((1, 1), (0, 0, 2000, 1000)), "gif")
    assert image_size(lying) == (2000, 1000)
    assert input_bound(prompt_of(row("a", image(lying))), "gpt-4o") >= 85 + 170 * 6
    later = data_url(gif((100, 100), (0, 0, 10, 10), (50, 60, 3000, 40)), "gif")
    assert image_size(later) == (3050, 100)  # an animation's later frame too
    assert image_size(data_url(gif((300, 200), (0, 0, 300, 200)), "gif")) == (300, 200)


def test_a_jpegs_size_is_its_largest_frame_header_before_the_scan() -> None:
    # Pillow takes the last frame header (a DHP one too): these open as 4000 x 3000, 2000 x 100.
    def frame(marker: int, width: int, height: int) -> bytes:
        components = b"\x03\x01\x11\x00\x02\x11\x00\x03\x11\x00"  # three, as Pillow reads them
        return bytes([0xFF, marker]) + struct.pack(">HBHH", 17, 8, height, width) + components

    scan = b"\xff\xda" + struct.pack(">H", 8) + b"\0" * 30
    two = b"\xff\xd8" + frame(0xC0, 1, 1) + frame(0xC2, 4000, 3000) + scan
    assert image_size(data_url(two, "jpeg")) == (4000, 3000)
    hierarchical = b"\xff\xd8" + frame(0xC0, 8, 8) + frame(0xDE, 2000, 100) + scan
    assert image_size(data_url(hierarchical, "jpeg")) == (2000, 100)
    cut = b"\xff\xd8" + frame(0xC0, 8, 8)  # no scan: what follows cannot be known
    assert image_size(data_url(cut, "jpeg")) == (8, 8)


@pytest.mark.parametrize(
    ("size", "detail", "model", "tokens"),
    [
        (None, "high", "gpt-4o", 85 + 170 * 8),  # a URL: the worst case, 8 tiles
        (None, "auto", "gpt-4o-2024-08-06", 85 + 170 * 8),
        (None, "low", "gpt-4o", 85),
        ((1024, 1024), "high", "gpt-4o", 85 + 170 * 4),  # OpenAI's own example: 765
        ((4096, 8192), "high", "gpt-4o", 85 + 170 * 6),  # 2048 x 1024 -> 768 x 1536: 2 x 3
        (None, "high", "gpt-4o-mini", 2833 + 5667 * 8),
        (None, "low", "gpt-4o-mini", 2833),
        (None, "high", "gpt-4.1-mini", 2489),  # 1,536 patches x 1.62
        (None, "high", "gpt-4.1-nano", 3779),  # x 2.46
        ((64, 64), "high", "o4-mini", 7),  # 4 patches x 1.72
        (None, "high", "some-unknown-model", 2833 + 5667 * 8),  # the largest known
        (None, "low", None, 3779),  # the largest known at low detail: a patch model's
    ],
)
def test_an_images_tokens_are_bounded_by_the_models_published_rule(
    size: tuple[int, int] | None, detail: str, model: str | None, tokens: int
) -> None:
    assert image_tokens(size, detail, model) == tokens


def test_the_bound_and_the_estimate_of_a_request_carry_its_images_worst_case() -> None:
    text_only = prompt_of({"id": "t", "messages": [{"role": "user", "content": "x"}]})
    one = prompt_of(row("a", image(CAT)))
    two = prompt_of(row("a", image(CAT), image(CAT, "low")))
    worst = 85 + 170 * 8
    assert input_bound(one, "gpt-4o") >= input_bound(text_only, "gpt-4o") + worst
    # --tpm must not over-admit either: the estimate books the image at its bound too.
    assert input_estimate(one, "gpt-4o") >= worst
    assert input_bound(two, "gpt-4o") >= input_bound(one, "gpt-4o") + 85
    assert input_bound(one) >= 2833 + 5667 * 8  # no model known: the largest bound
    small = prompt_of(row("a", image(data_url(png(512, 512)), "high")))
    assert worst > input_bound(small, "gpt-4o") >= 85 + 170 * 4  # 768 x 768 at most


def test_a_batch_lines_messages_are_bounded_with_their_images_too() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image(CAT)]}]
    assert messages_bound(messages, "gpt-4o-mini") >= 2833 + 5667 * 8


def test_the_meters_fast_path_reserves_an_images_worst_case() -> None:
    # admit_now counts a one-message row from its text alone: an image's row must not.
    budget = Budget(1.0, Price(1.0, 1.0))
    meter = Meter(params={"max_tokens": 1}, budget=budget, model="gpt-4o")
    ticket = meter.admit_now(prompt_of(row("a", image(CAT))))
    assert ticket is not None
    assert ticket.input_tokens >= 85 + 170 * 8


def test_audio_is_bounded_by_its_wav_length_and_other_formats_are_refused() -> None:
    assert wav_seconds(wav(2.0)) == pytest.approx(2.0, abs=0.01)
    sound = {"type": "input_audio", "input_audio": {"data": wav(2.0), "format": "wav"}}
    prompt = prompt_of(row("a", sound))
    assert input_bound(prompt, "gpt-4o-audio-preview") >= 2 * 40  # one token per 25 ms
    assert "[audio: wav, 2.0 s]" in prompt.text
    with pytest.raises(RowProblem, match="not base64 of a wav file"):
        interpret(row("a", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}), FIELDS, 0)  # fmt: skip


def wav_saying(seconds: float, **fmt: int) -> str:
    """An 8-bit mono 8 kHz wav of `seconds`, its fmt chunk's fields (code, byte_rate) as said."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * int(8000 * seconds))
    data = bytearray(out.getvalue())
    if "code" in fmt:
        data[20:22] = struct.pack("<H", fmt["code"])
    if "byte_rate" in fmt:
        data[28:32] = struct.pack("<I", fmt["byte_rate"])
    return base64.b64encode(bytes(data)).decode()


def test_a_wavs_length_is_read_from_its_sample_rate_not_a_byte_rate_that_lies() -> None:
    # A decoder plays 60 s of it (8,000 one-byte frames a second) whatever the byte rate says.
    lying = wav_saying(60, byte_rate=0xFFFFFFFF)
    with wave.open(io.BytesIO(base64.b64decode(lying))) as played:
        assert played.getnframes() == 8000 * 60
    assert wav_seconds(lying) == pytest.approx(60, abs=0.1)
    sound = {"type": "input_audio", "input_audio": {"data": lying, "format": "wav"}}
    assert input_bound(prompt_of(row("a", sound)), "gpt-4o-audio-preview") >= 60 * 40


def test_a_wav_of_compressed_audio_is_a_bad_row_its_length_unread() -> None:
    adpcm = wav_saying(1, code=0x11)  # IMA ADPCM: how long it plays needs it decoded
    assert wav_seconds(adpcm) is None
    sound = {"type": "input_audio", "input_audio": {"data": adpcm, "format": "wav"}}
    with pytest.raises(RowProblem, match="PCM samples"):
        interpret(row("a", sound), FIELDS, 0)


# -- shown shortened -------------------------------------------------------------------------------


def test_a_data_url_is_shown_shortened_with_its_length() -> None:
    url = data_url(png(10, 10))
    data = url.split(",", 1)[1]
    assert shown_url(url) == f"data:image/png;base64,iVBOR...({len(data):,} chars)"
    assert shown_url(CAT) == CAT
    # A scheme in capitals is a data URL too (RFC 2397): shown shortened, its size read.
    shouted = "DATA:image/png;BASE64," + data
    assert shown_url(shouted) == f"DATA:image/png;BASE64,iVBOR...({len(data):,} chars)"
    assert image_size(shouted) == (10, 10)


# -- end to end ---------------------------------------------------------------------------------


class Recorder:
    """An OpenAI-compatible server on 127.0.0.1 that keeps every body it got and answers each
    with `usage(body)`'s prompt tokens (and one completion token)."""

    def __init__(self, usage: Callable[[dict[str, Any]], int] = lambda body: 10) -> None:
        self.bodies: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                recorder.bodies.append(body)
                reply = {
                    "id": "chatcmpl-1",
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": "a cat"},
                         "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": usage(body), "completion_tokens": 1},
                }  # fmt: skip
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as server:
        yield server


def run(src: Path, out: Path, url: str, *extra: str) -> Any:
    argv = ["run", str(src), "-o", str(out), "--provider", "openai", "--base-url", url]
    argv += ["--rate", "0", "--no-progress", "--timeout", "10", *extra]
    return CliRunner().invoke(cli, argv, env={"OPENAI_API_KEY": "sk-test"})


@pytest.mark.slow
def test_images_reach_the_server_as_the_rows_hold_them_once_per_request(
    tmp_path: Path, recorder: Recorder
) -> None:
    small = data_url(png(64, 64))
    rows = [
        row("url", image(CAT, "low")),
        row("data", image(small)),
        row("again", image(CAT, "low")),  # the same request: sent once, its answer shared
        row("dog", image("https://example.com/dog.png", "low")),
    ]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    result = run(src, out, recorder.url, "--model", "gpt-4o")
    assert result.exit_code == 0, result.output
    sent = sorted((b["messages"] for b in recorder.bodies), key=json.dumps)
    assert sent == sorted((r["messages"] for r in rows[:2] + rows[3:]), key=json.dumps)
    got = {r["id"]: r for r in read_jsonl(out)}
    assert got["again"]["reused_from"] == "url"
    assert all(r["answer"] == "a cat" for r in got.values())
    # The output carries each row's messages as read, its data URL whole.
    assert got["data"]["messages"] == rows[1]["messages"]


@pytest.mark.slow
def test_the_output_parquet_keeps_the_parts_beside_text_rows(
    tmp_path: Path, recorder: Recorder
) -> None:
    import pyarrow.parquet as pq

    rows = [{"id": "t", "messages": [{"role": "user", "content": "hi"}]}, row("i", image(CAT))]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.parquet"
    result = run(src, out, recorder.url, "--model", "gpt-4o")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pylist()
    kept = [m if isinstance(m, list) else json.loads(m) for m in (r["messages"] for r in table)]
    assert kept == [r["messages"] for r in rows]


@pytest.mark.slow
def test_a_dry_run_shows_a_data_url_shortened(tmp_path: Path, recorder: Recorder) -> None:
    url = data_url(png(64, 64, pad=30000))
    src = write_jsonl(tmp_path / "in.jsonl", [row("a", image(url))])
    result = run(src, tmp_path / "out.jsonl", recorder.url, "--model", "gpt-4o", "--dry-run")
    assert result.exit_code == 0, result.output
    data = url.split(",", 1)[1]
    assert f'"url":"data:image/png;base64,iVBOR...({len(data):,} chars)"' in result.output
    assert data[:100] not in result.output
    assert recorder.bodies == []


@pytest.mark.slow
def test_pizzagpt_refuses_a_row_with_an_image_before_anything_is_sent(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [row("a", image(CAT))])
    argv = ["run", str(src), "-o", str(tmp_path / "out.jsonl"), "--mock", "--no-progress"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    assert "Pizzagpt takes text alone" in result.output


@pytest.mark.slow
def test_max_cost_holds_when_every_image_is_billed_at_its_worst_case(tmp_path: Path) -> None:
    worst = 2833 + 5667 * 8  # gpt-4o-mini, an image at a URL at high detail
    with Recorder(lambda body: worst + 20) as server:
        rows = [row(f"r{i}", image(f"https://example.com/{i}.png")) for i in range(10)]
        src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
        # $1 a million input tokens: each request costs about $0.048; the cap fits 4.
        result = run(
            src, out, server.url, "--model", "gpt-4o-mini", "--price", "1,1",
            "--param", "max_tokens=1", "--max-cost", "0.2", "--concurrency", "8",
        )  # fmt: skip
        assert result.exit_code == 4, result.output
        assert len(server.bodies) == 4  # a fifth would have billed past the cap
        assert len(server.bodies) * (worst + 20 + 1) / 1e6 <= 0.2
    assert sum(r["finish_reason"] == "pending" for r in read_jsonl(out)) == 6


@pytest.mark.slow
def test_a_batch_api_run_carries_the_parts_in_its_request_file(tmp_path: Path, server: Any) -> None:
    from tests.batchapi_shared import args
    from tests.batchapi_shared import run as run_batch

    rows = [row("a", image(CAT, "high")), row("b", image(data_url(png(8, 8))))]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    server.batches.seconds = 3600.0  # out until told otherwise
    result = run_batch(*args(src, out, server.base_url, "--via", "batch"))
    assert result.returncode == 4, result.stderr
    # The checkpoint keeps each line whole, to resend it: the data URL too.
    with contextlib.closing(sqlite3.connect(f"{out}.checkpoint")) as conn:
        kept = b"".join(line for (line,) in conn.execute("SELECT line FROM batch_lines"))
    assert all(json.dumps(r["messages"][0]["content"][1]["image_url"]["url"]).encode() in kept for r in rows)  # fmt: skip
    for batch in server.batches.batches.values():
        batch["_started"] -= 3600.0  # done at the next poll
    result = run_batch(*args(src, out, server.base_url, "--via", "batch", "--wait"))
    assert result.returncode == 0, result.stderr
    lines = [
        json.loads(line)
        for content in server.batches.contents.values()
        for line in content.splitlines()
        if b'"custom_id"' in line and b'"body"' in line and b'"method"' in line
    ]
    sent = sorted((line["body"]["messages"] for line in lines), key=json.dumps)
    assert sent == sorted((r["messages"] for r in rows), key=json.dumps)
    assert [r["finish_reason"] for r in read_jsonl(out)] == ["stop", "stop"]


@pytest.mark.slow
def test_the_mock_answers_each_image_apart_and_bills_it(tmp_path: Path, mock_api: Any) -> None:
    rows = [
        row("low", image(CAT, "low")),
        row("high", image(CAT, "high")),
        row(
            "text",
        ),
    ]
    rows[2]["messages"][0]["content"] = "What is in this picture?"
    # Two data URLs alike in their start and length: the answer depends on all of each.
    rows += [row("red", image(data_url(png(8, 8, pad=100)))), row("blue", image(data_url(png(9, 8, pad=100))))]  # fmt: skip
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    result = run(src, out, f"{mock_api.base_url}/v1", "--model", "batchpizza-mock")
    assert result.exit_code == 0, result.output
    got = {r["id"]: r for r in read_jsonl(out)}
    assert len({r["answer"] for r in got.values()}) == 5  # the image is part of what it answers
    text = got["text"]["prompt_tokens"]
    assert got["low"]["prompt_tokens"] == text + 85
    assert got["high"]["prompt_tokens"] == text + 765
    assert mock_api.tokens.prompt_tokens == sum(r["prompt_tokens"] for r in got.values())


@pytest.mark.slow
def test_max_cost_against_the_mock_reserves_each_image_at_the_models_worst_case(
    tmp_path: Path, mock_api: Any
) -> None:
    # batchpizza-mock is no model the rules know: an image at a URL reserves the largest
    # bound, 48,169 tokens, at the mock's $1 a million input: about $0.048 each, so a cap of
    # $0.06 lets one go at a time (each then spends far less: the mock bills it 765).
    mock_api.config = MockConfig(seed=1, latency_ms=30)  # without the bound: 6 in flight
    rows = [row(f"r{i}", image(f"https://example.com/{i}.png")) for i in range(6)]
    src, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    result = run(
        src, out, f"{mock_api.base_url}/v1", "--model", "batchpizza-mock",
        "--param", "max_tokens=5", "--max-cost", "0.06", "--concurrency", "6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert mock_api.stats.peak_in_flight == 1
    assert mock_api.stats.requests == 6
    assert mock_api.tokens.cost <= 0.06


@pytest.mark.slow
def test_answer_from_python_sends_the_parts_of_its_rows(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchpizza import answer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    rows = [row("a", image(CAT)), row("b", image(data_url(png(16, 16)), "low"))]
    done = answer(
        rows, provider="openai", model="gpt-4o", base_url=recorder.url, rate=0,
        checkpoint=str(tmp_path / "c.checkpoint"), progress=False,
    )  # fmt: skip
    assert [r["answer"] for r in done] == ["a cat", "a cat"]
    sent = sorted((b["messages"] for b in recorder.bodies), key=json.dumps)
    assert sent == sorted((r["messages"] for r in rows), key=json.dumps)


@pytest.mark.slow
def test_a_parquet_inputs_parts_are_sent_without_the_nulls_of_their_structs(
    tmp_path: Path, recorder: Recorder
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row("a", image(CAT, "low")), row("b")]  # b: a text part alone, one text sent
    src, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)  # a text part gets image_url: null
    result = run(src, out, recorder.url, "--model", "gpt-4o")
    assert result.exit_code == 0, result.output
    sent = sorted((b["messages"] for b in recorder.bodies), key=json.dumps)
    text = [{"role": "user", "content": "What is in this picture?"}]  # the text part joined
    assert sent == sorted([rows[0]["messages"], text], key=json.dumps)


def test_a_batch_lines_own_model_bounds_its_images_when_no_model_is_given() -> None:
    line = {"custom_id": "a", "body": {"model": "gpt-4o", **row("a", image(CAT))}}
    del line["body"]["id"]
    prompt = prompt_of(line)
    bound = Meter(params={}).input_sizes(prompt)[0]
    assert 85 + 170 * 8 <= bound < 2833  # gpt-4o's worst case, not the largest known
    assert Meter(params={}, model="gpt-4o-mini").input_sizes(prompt)[0] > 2833 + 5667 * 8


def test_tpm_books_an_images_worst_case_not_its_text_alone() -> None:
    from batchpizza.controls.tokens import TokenPacer

    meter = Meter(params={"max_tokens": 1}, pacer=TokenPacer(1000.0), model="gpt-4o")
    ticket = meter.admit_now(prompt_of(row("a", image(CAT))))
    assert ticket is not None
    assert ticket.booked >= 85 + 170 * 8 + 1
