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

The estimate paces --tpm and sizes --dry-run; the bound is what a request reserves of a
--max-cost budget, so that the server's count never passes it. Pizzagpt reports no usage: its
rows carry the estimate, marked as one (`tokens_estimated`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import batchpizza.jsoncodec as jsoncodec
from batchpizza.records import Prompt

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_OVERHEAD = 3
BOUND_MESSAGE_OVERHEAD = 8
BOUND_REPLY_OVERHEAD = 8


def text_tokens(text: str) -> int:
    """The estimate for a bare text (an answer): a quarter of its characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _contents(prompt: Prompt) -> Iterable[str]:
    if not prompt.messages:
        return (prompt.text,)
    return (_content(m) for m in prompt.messages)


def _content(message: Mapping[str, Any]) -> str:
    """The text of a message the model reads: its content, and its name where it has one."""
    content = message.get("content")
    speaker = message.get("name")
    if isinstance(speaker, str) and speaker:
        return speaker + _content({"content": content})
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _text_alone(prompt: Prompt) -> bool:
    """Whether `prompt`'s request is its text alone: no messages, or one without a name."""
    messages = prompt.messages
    return not messages or (len(messages) == 1 and "name" not in messages[0])


def input_estimate(prompt: Prompt) -> int:
    """The estimated input tokens of `prompt`'s request."""
    if _text_alone(prompt):  # a prompt row, the usual case: its text is its one message
        return -(-len(prompt.text) // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD + REPLY_OVERHEAD
    return input_sizes(prompt)[1]


def input_bound(prompt: Prompt) -> int:
    """At least as many tokens as any byte-level tokenizer makes of `prompt`'s request."""
    return input_sizes(prompt)[0]


def input_sizes(prompt: Prompt) -> tuple[int, int]:
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
    for text in _contents(prompt):
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        bound += size + BOUND_MESSAGE_OVERHEAD
        estimate += text_tokens(text) + MESSAGE_OVERHEAD
    return bound, estimate


def messages_bound(messages: Iterable[Any]) -> int:
    """`input_bound` of a request's messages as sent (a Batch API line's body)."""
    n = BOUND_REPLY_OVERHEAD
    for message in messages:
        text = _content(message) if isinstance(message, Mapping) else ""
        n += len(text.encode("utf-8", "surrogatepass")) + BOUND_MESSAGE_OVERHEAD
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
