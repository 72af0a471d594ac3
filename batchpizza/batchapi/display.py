"""How `status` and --dry-run show a checkpoint's batches: each one still out, its state and
request counts, and how many were collected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchpizza.checkpoint.batches import BatchFile

SHOWN = 20  # batches listed one a line at most; the rest counted


def batches_info(files: Sequence[BatchFile]) -> dict[str, Any]:
    """For `status --json`: the batches still out, and how many were collected."""
    out = [f for f in files if not f.done]
    return {
        "out": [f.to_dict() for f in out],
        "collected": len(files) - len(out),
        "lines_out": sum(f.lines for f in out),
    }


def batches_text(files: Sequence[BatchFile], indent: str = "  ") -> list[str]:
    """One line a batch still out, then a line of totals; nothing when there were none."""
    if not files:
        return []
    out = [f for f in files if not f.done]
    lines = [
        f"{indent}batches    {len(out)} out ({sum(f.lines for f in out)} requests), "
        f"{len(files) - len(out)} collected"
    ]
    for f in out[:SHOWN]:
        counts = f.counts
        done = counts.get("completed", 0) if counts else 0
        failed = counts.get("failed", 0) if counts else 0
        lines.append(
            f"{indent}  {f.batch_id or '(not created yet)'}  {f.state:<11} "
            f"{done}/{f.lines} done, {failed} failed  {f.name}"
        )
    if len(out) > SHOWN:
        lines.append(f"{indent}  ... and {len(out) - SHOWN} more")
    return lines
