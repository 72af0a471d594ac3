"""How many tokens a request takes, without a tokenizer.

No tokenizer works offline here (tiktoken downloads its encodings on first use), so input tokens
are estimated from the text, and for money the estimate is replaced by a bound that no byte-level
tokenizer can pass:

    estimate   ceil(characters / 4) per message + 4 per message + 3 (the reply's priming), the
               rule of thumb OpenAI gives for English and its chat format's overhead
    bound      UTF-8 bytes per message + 8 per message + 8: every token of a byte-level BPE
               (GPT, Llama 3, Qwen) or a byte-fallback SentencePiece is at least one byte, and
               the template adds a few special tokens per message; plus the bytes of the body
               parameters the model reads (tools, a schema: params_sizes)
    media      an image's or audio's tokens by OpenAI's rules for the model, at their worst
               where the size is not known (media.py): in the bound and in the estimate alike,
               since --tpm must not over-admit either

The estimate paces --tpm and sizes --dry-run; the bound is what a request reserves of a
--max-cost budget, so that the server's count never passes it. Pizzagpt reports no usage: its
rows carry the estimate, marked as one (`tokens_estimated`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.media import parts_tokens
from batchpizza.records import Prompt

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3
BOUND_MESSAGE_OVERHEAD = 8
BOUND_REPLY_OVERHEAD = 8


def text_tokens(text: str) -> int:
    """The estimate for a bare text (an answer): a quarter of its characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _contents(prompt: Prompt, model: str | None) -> Iterable[tuple[str, int]]:
    if not prompt.messages:
        return ((prompt.text, 0),)
    return (_content(m, model) for m in prompt.messages)


def _content(message: Mapping[str, Any], model: str | None) -> tuple[str, int]:
    """The text of a message the model reads, its content and its name where it has one; and
    the bound of its images and audio (media.parts_tokens)."""
    content = message.get("content")
    speaker = message.get("name")
    said = speaker if isinstance(speaker, str) else ""
    if isinstance(content, str):
        return said + content, 0
    if isinstance(content, list):  # content parts
        media, text = parts_tokens(content, model)
        return said + text, media
    return said, 0


def _text_alone(prompt: Prompt) -> bool:
    """Whether `prompt`'s request is its text alone: no messages, or one text without a name."""
    messages = prompt.messages
    return not messages or (
        len(messages) == 1
        and "name" not in messages[0]
        and isinstance(messages[0].get("content"), str)
    )


def input_estimate(prompt: Prompt, model: str | None = None) -> int:
    """The estimated input tokens of `prompt`'s request (to `model`: its images' rule)."""
    if _text_alone(prompt):  # a prompt row, the usual case: its text is its one message
        return -(-len(prompt.text) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD + REPLY_OVERHEAD
    return input_sizes(prompt, model)[1]


def input_bound(prompt: Prompt, model: str | None = None) -> int:
    """At least as many tokens as any byte-level tokenizer makes of `prompt`'s request, its
    images and audio at most as many as `model` bills them (None: any model known)."""
    return input_sizes(prompt, model)[0]


def input_sizes(prompt: Prompt, model: str | None = None) -> tuple[int, int]:
    """(`input_bound`, `input_estimate`) of `prompt`'s request, in one walk of its text: a
    metered request needs both, once per attempt."""
    if _text_alone(prompt):  # a prompt row, the usual case: its text is its one message
        text = prompt.text
        chars = len(text)
        size = chars if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return (
            size + BOUND_MESSAGE_OVERHEAD + BOUND_REPLY_OVERHEAD,
            -(-chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD + REPLY_OVERHEAD,
        )
    bound, estimate = BOUND_REPLY_OVERHEAD, REPLY_OVERHEAD
    for text, media in _contents(prompt, model):
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        bound += size + BOUND_MESSAGE_OVERHEAD + media
        estimate += text_tokens(text) + MESSAGE_OVERHEAD + media
    return bound, estimate


def messages_bound(messages: Iterable[Any], model: str | None = None) -> int:
    """`input_bound` of a request's messages as sent (a Batch API line's body) to `model`."""
    n = BOUND_REPLY_OVERHEAD
    for message in messages:
        text, media = _content(message, model) if isinstance(message, Mapping) else ("", 0)
        n += len(text.encode("utf-8", "surrogatepass")) + BOUND_MESSAGE_OVERHEAD + media
    return n


def params_sizes(params: Mapping[str, Any]) -> tuple[int, int]:
    """(bound, estimate) of the input tokens a request's body parameters add beyond its
    messages: the UTF-8 bytes, as JSON, of each one that is a list or an object (`tools`,
    `functions`, a `response_format` given as --param: the server counts what they say as
    input), and a quarter of those. A scalar (`temperature`, `max_tokens`, `seed`) is no text
    the model reads."""
    size = 0
    for name, value in params.items():
        if name != "messages" and isinstance(value, (dict, list)) and value:
            size += len(jsoncodec.dumps(value))
    return size, -(-size // CHARS_PER_TOKEN)


def max_output(params: Mapping[str, Any], prompt: Prompt | None = None) -> int | None:
    """The request's output cap, `max_completion_tokens` or `max_tokens`, from --param over a
    batch line's body, times its choices (`n`: each may use the cap, and all are billed); None
    when it sets none. A cap --param names under either name replaces the line's (the request
    carries only --param's: see OpenAIAPI.body), even a null one."""
    sources = (params, (prompt.body or {}) if prompt is not None else {})
    caps = ("max_completion_tokens", "max_tokens")
    cap = _first_count(sources[:1] if any(k in params for k in caps) else sources, caps)
    if cap is None:
        return None
    return cap * (_first_count(sources, ("n",)) or 1)


def _first_count(sources: tuple[Mapping[str, Any], ...], names: tuple[str, ...]) -> int | None:
    for source in sources:
        for name in names:
            value = source.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
