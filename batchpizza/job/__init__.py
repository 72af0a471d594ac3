"""The file job: a run from an input file to an output file, and the `run`/`arun` doors."""

from batchpizza.job.loop import run_loop
from batchpizza.job.stages import Job, arun, run

__all__ = ["Job", "arun", "run", "run_loop"]
