"""The commands that look at a checkpoint without running anything: `status` (what it holds, and
whether a run holds its lock now) and `report` (what the runs on it did, as text, JSON or a page).
They read the checkpoint as a reader only, so either may be run beside a live run; cli.py
registers them on the command group.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import click

from batchpizza.batchapi.display import (
    batches_info,
    batches_text,
    origins_info,
    others_text,
    out_and_waiting,
)
from batchpizza.checkpoint import Checkpoint, is_locked
from batchpizza.commands import say
from batchpizza.errors import BatchpizzaError
from batchpizza.files import refuse_own_files, write_atomically
from batchpizza.plurals import noun, plural
from batchpizza.pricing import dollars
from batchpizza.sources.base import files_changed


@click.command()
@click.argument("output", required=False)
@click.option("--checkpoint", help="The checkpoint file [default: OUTPUT.checkpoint].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(output: str | None, checkpoint: str | None, as_json: bool) -> None:
    """What the checkpoint of OUTPUT holds, and whether a run is using it now."""
    path = checkpoint_path(output, checkpoint)
    try:
        store = Checkpoint.open(path, create=False, readonly=True)
        try:
            info = store.status()
            # The counts and the plan are of the input as the last run read it.
            info["input_changed"] = files_changed(store.meta().get("scan_key"))
            files = store.batch_files()
            others = store.open_files(True)  # another model's or parameters' batches still out
            origins = store.file_origins()  # where each went (batchapi/others.py)
            last_origin = store.meta().get("batch_origin")  # the last run's that looked for them
            # --schema: answers that fit it, at once or re-asked
            info["structured"] = store.fit_counts()
            spent = store.spend()
            # Of what a rerun would send, the requests in batches out (the plan's, as its dry
            # run counts them): a --via batch rerun collects them.
            held = store.in_batches_out(last_origin) if info.get("to_send") else 0
        finally:
            store.close()
    except BatchpizzaError as exc:
        say(exc)
        sys.exit(exc.exit_code)
    info["checkpoint"] = str(path)
    info["running"] = is_locked(path)
    if files:
        info["batches"] = batches_info(files)
    if others:
        theirs = batches_info(others)
        theirs["servers"] = origins_info(out_and_waiting(others)[0], origins)
        info["other_batches"] = theirs
    # Every run's, as the spend table keeps them (the answers' tokens, at each run's price).
    info["tokens"] = {
        "input": spent.prompt_tokens,
        "output": spent.completion_tokens,
        "estimated": spent.estimated,
    }
    info["spent"] = round(spent.dollars, 6)
    if spent.batch_prompt_tokens or spent.batch_completion_tokens:  # of which at the batch price
        info["batch_spend"] = {
            "input": spent.batch_prompt_tokens,
            "output": spent.batch_completion_tokens,
            "dollars": round(spent.batch_dollars, 6),
        }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    updated = info.get("updated")
    when = (
        dt.datetime.fromtimestamp(float(updated)).isoformat(timespec="seconds")  # type: ignore[arg-type]
        if updated
        else "never"
    )
    click.echo(f"checkpoint {path}")
    rows = info.get("rows", "?")
    samples = info.get("samples")
    if isinstance(rows, int) and isinstance(samples, int):  # --repeat N: N output rows a row
        rows = (
            f"{plural(rows // samples, 'row')}, {plural(samples, 'sample')} each: "
            f"{plural(rows, 'output row')}"
        )
    elif isinstance(rows, int):
        rows = plural(rows, "row")
    else:
        rows = f"{rows} rows"
    if info["input_changed"]:
        rows += " when the last run read it; changed since"
    click.echo(f"  input      {info.get('input') or 'unknown'} ({rows})")
    for key in ("answered", "failed", "misuse", "invalid", "pending"):
        click.echo(f"  {key:<10} {info.get(key, '?')}")
    counts = info.get("structured")
    if isinstance(counts, dict):
        valid, reasked, invalid = counts["valid"], counts["reasked"], counts["invalid"]
        unchecked = counts.get("not_validated", 0)
        click.echo(
            f"  schema     {valid} valid ({reasked} after a re-ask), {invalid} invalid output"
            + (f", {unchecked} answered but not validated" if unchecked else "")
        )
    if info.get("to_send"):
        waiting = sum(f.lines for f in out_and_waiting(files)[1])
        said = (  # a rerun with --via batch collects these instead of sending them
            f"; {held} of these {noun(held, 'request is', 'requests are')} in batches still "
            "out, which --via batch collects"
            if held
            else ""
        )
        if waiting:  # and submits these, in the files already recorded
            said += (
                f"; {waiting} {noun(waiting, 'is', 'are')} in files waiting to be submitted, "
                "which --via batch submits"
            )
        if info["input_changed"]:  # a rerun scans it again: new rows, changed prompts
            said += (
                "; the input changed since: the rerun reads it again (--dry-run says what it sends)"
            )
        click.echo(
            f"  rerun      {info['to_send']} (with the last run's provider, model, params){said}"
        )
    kept = info.get("answers_kept")
    kept = plural(kept, "answer") if isinstance(kept, int) else f"{kept or '?'} answers"
    click.echo(f"  kept       {kept} in all")
    if spent.prompt_tokens or spent.completion_tokens:
        estimated = " (estimated)" if spent.estimated else ""
        click.echo(
            f"  tokens     {spent.prompt_tokens:,} in + {spent.completion_tokens:,} out"
            f"{estimated}, {dollars(spent.dollars)} spent over all runs"
        )
    if spent.batch_prompt_tokens or spent.batch_completion_tokens:
        click.echo(
            f"  batch      of which {spent.batch_prompt_tokens:,} in + "
            f"{spent.batch_completion_tokens:,} out through the Batch API, at half price: "
            f"{dollars(spent.batch_dollars)}"
        )
    click.echo(f"  written    {when}")
    click.echo(f"  running    {'yes: a run holds the lock' if info['running'] else 'no'}")
    for line in batches_text(files, origins=origins, last=last_origin):
        click.echo(line)
    theirs_out, theirs_waiting = out_and_waiting(others)
    for line in others_text(theirs_out, origins, last_origin):
        click.echo(line)
    if theirs_waiting:  # never submitted (an upload refused): billed by nobody yet
        n = len(theirs_waiting)
        click.echo(
            f"  others     {plural(n, 'file')} of other models or parameters waiting to be "
            f"submitted ({plural(sum(f.lines for f in theirs_waiting), 'request')}): a "
            "--via batch run of theirs submits them"
        )


def checkpoint_path(output: str | None, checkpoint: str | None) -> Path:
    if not output and not checkpoint:
        raise click.UsageError("give OUTPUT or --checkpoint")
    path = Path(checkpoint) if checkpoint else Path(f"{output}.checkpoint")
    if not checkpoint and not path.exists() and Path(f"{output}.mock-checkpoint").exists():
        path = Path(f"{output}.mock-checkpoint")  # the output of an offline --mock run
    return path


@click.command()
@click.argument("output", required=False)
@click.option("--checkpoint", help="The checkpoint file [default: OUTPUT.checkpoint].")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@click.option(
    "--html",
    type=click.Path(dir_okay=False),
    help="Also write one self-contained page with charts (opens offline).",
)
def report(output: str | None, checkpoint: str | None, as_json: bool, html: str | None) -> None:
    """What the runs on OUTPUT did: rows, requests, retries, latency, errors, rate, breaker."""
    from batchpizza.reporting import build_report, run_files

    path = checkpoint_path(output, checkpoint)
    try:
        if html is not None:  # refused before the report is built, as a run's paths are
            refuse_own_files(Path(html), "--html", *run_files(path, output))
        text, numbers, page = build_report(path, html=html is not None)
        if html is not None and page is not None:
            write_atomically(Path(html), page.encode("utf-8"))
    except BatchpizzaError as exc:
        say(exc)
        sys.exit(exc.exit_code)
    click.echo(json.dumps(numbers, indent=2) if as_json else text)
