"""`batchpizza run INPUT -o OUTPUT --ray [ADDRESS]`: the command line's run on a Ray cluster, over
batchpizza.ray.answer. Ray is imported only when the command runs."""

from __future__ import annotations

from typing import Any

from batchpizza.errors import UsageError

# CLI options a cluster run does not take (yet): refused when set, dropped when at their default.
_NOT_ON_RAY = ("dry_run", "limit", "summary_json", "mock", "restart", "format")
_DRIVER_ONLY = ("progress", "progress_every", "quiet", "verbose")


def run(input: str, output: str, *, address: str = "auto", **options: Any) -> int:
    """`batchpizza run INPUT -o OUTPUT --ray [ADDRESS]`: INPUT a Parquet file or folder of parts
    (or JSONL), local or a URI; OUTPUT a folder of Parquet parts, rows in input order. The
    checkpoint is a folder, by default OUTPUT.checkpoint. Returns the exit code: 0 every row
    answered, 3 some failed or were refused, 4 stopped early (rows pending: rerun to continue)."""
    for name in _NOT_ON_RAY:
        if options.pop(name, None):
            raise UsageError(f"--{name.replace('_', '-')} is not supported with --ray yet")
    quiet = bool(options.get("quiet"))
    for name in _DRIVER_ONLY:
        options.pop(name, None)
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(options.get("params"), tuple):
        options["params"] = list(options["params"])
    checkpoint = options.pop("checkpoint", None) or output.rstrip("/") + ".checkpoint"
    import ray

    from batchpizza.ray import answer

    # auto: RAY_ADDRESS or a running local cluster if there is one, else a new local one.
    ray.init(address=None if address == "auto" else address, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        if input.endswith((".jsonl", ".ndjson", ".jsonl.gz")):
            ds = ray.data.read_json(input, lines=True)
        else:
            ds = ray.data.read_parquet(input)
        answered = answer(ds, checkpoint=checkpoint, **options).materialize()
        reasons = answered.select_columns(["finish_reason"]).to_pandas()["finish_reason"]
        counts = reasons.value_counts().to_dict()
        answered.write_parquet(output)
    finally:
        ray.shutdown()
    if not quiet:
        said = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        print(f"batchpizza: done on Ray: {len(reasons)} rows: {said}; output {output}")
    if counts.get("pending"):
        return 4
    return 0 if set(counts) <= {"stop"} else 3
