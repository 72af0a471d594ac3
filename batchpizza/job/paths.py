"""What a run checks of the paths it was given before it reads or sends anything."""

from __future__ import annotations

from pathlib import Path

from batchpizza.config import RunConfig
from batchpizza.errors import UsageError
from batchpizza.files import check_writable, inside, same_file
from batchpizza.sources import input_files


def check_paths(config: RunConfig) -> None:
    """Folders writable, and no two of input, output, checkpoint and summary the same file (an
    output written over its input would turn every later run's rows bad). In-memory data has
    no input or output file: only the checkpoint and the summary are checked."""
    named: list[tuple[str, Path]] = []
    if config.output is not None:
        output = Path(config.output)
        if output.is_dir():
            raise UsageError(f"output {output} is a directory; give a file name")
        check_writable(output.parent, "output")
        named.append(("output", output))
    checkpoint = config.checkpoint_path
    if checkpoint is not None:
        check_writable(checkpoint.parent, "checkpoint")
        named.append(("checkpoint", checkpoint))
    if config.summary_json:
        summary = Path(config.summary_json)
        if summary.is_dir():
            raise UsageError(f"--summary-json {config.summary_json} is a directory")
        check_writable(summary.parent, "summary")
        named.append(("summary", summary))
    if config.input is not None:
        named += [("input", p) for p in input_files(config.input)]
    for i, (what, path) in enumerate(named):
        for other, other_path in named[i + 1 :]:
            if what != other and same_file(path, other_path):
                raise UsageError(f"the {what} and the {other} are the same file ({path})")
    if config.input not in (None, "-") and Path(config.input).is_dir():
        for what, path in named:
            if what != "input" and inside(path, Path(config.input)):
                raise UsageError(
                    f"the {what} {path} is inside the input folder {config.input}; "
                    "the next run would read it as input"
                )
