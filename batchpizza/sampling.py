"""Samples: each request asked several times on purpose (--repeat N). The plan counts in slots,
`position * N + sample`, one per output row; the source is read once per input row, and its
prompt handed on once per sample wanted, the sample number part of the request's key
(fingerprint.sample_digest), so each sample is kept, and resumed, on its own."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Generator, Iterable, Iterator

from batchpizza.records import Prompt

PromptsOf = Callable[[Iterable[int]], Generator[tuple[int, Prompt], None, None]]


def sampled(
    prompts_of: PromptsOf, slots: Iterable[int], samples: int
) -> Generator[tuple[int, Prompt], None, None]:
    """(slot, prompt) for every slot of `slots` (ascending), each row read once from
    `prompts_of` (a source's `prompts`, which takes positions)."""
    if samples == 1:  # a slot is a position
        return prompts_of(slots)
    return _sampled(prompts_of, slots, samples)


def _sampled(
    prompts_of: PromptsOf, slots: Iterable[int], samples: int
) -> Generator[tuple[int, Prompt], None, None]:
    wanted: dict[int, list[int]] = {}  # position -> its samples to send, until it is read

    def positions() -> Iterator[int]:
        # A position is handed to the source only once all its slots are known.
        for pos, group in itertools.groupby(slots, key=lambda slot: slot // samples):
            wanted[pos] = [slot % samples for slot in group]
            yield pos

    prompts = prompts_of(positions())
    try:
        for pos, prompt in prompts:
            for sample in wanted.pop(pos, ()):
                yield (
                    pos * samples + sample,
                    (dataclasses.replace(prompt, sample=sample) if sample else prompt),
                )
    finally:
        prompts.close()
