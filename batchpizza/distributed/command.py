"""`batchpizza run INPUT -o OUTPUT --ray [ADDRESS]`: the command line's run on a Ray cluster.

INPUT is a Parquet file or folder of parts, or JSON lines, local or a URI; OUTPUT a folder of
Parquet (or, with --format jsonl, JSON lines) parts in input order, written aside and renamed
into place (batchpizza.distributed.folders); the checkpoint a folder of answered rows
(batchpizza.distributed.parts), by default OUTPUT.checkpoint. The rows are answered by
batchpizza.ray.answer; the options mean what they mean without --ray, and the summary is the
single-process run's (batchpizza.records.Summary).

Ray is imported only once the cluster is needed: a dry run reads the input's ids and the
checkpoint's with pyarrow on the driver, and starts nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchpizza.checkpoint import RunLock
from batchpizza.config import DEFAULT_MOCK_RATE, RunConfig
from batchpizza.distributed import staging
from batchpizza.distributed.driver import (
    Signals,
    deadline_left,
    mock_server_process,
    quiet_ray,
    user_error,
)
from batchpizza.distributed.folders import (
    IdFirst,
    Layout,
    OutputFolder,
    answered_ids,
    check_input,
    check_places,
    delete_folder,
    filesystem,
    input_dataset,
    is_json_lines,
    is_uri,
    require_id,
    write_part,
)
from batchpizza.distributed.kept import KeptOutput, write_empty
from batchpizza.distributed.reaper import Watchdog, raylet_started_here, raylets_here
from batchpizza.distributed.staging import Staged, stage
from batchpizza.distributed.summary import count, summarize, tally_of
from batchpizza.errors import BatchpizzaError, Interrupted, LockedError, UsageError, saved_in
from batchpizza.files import scratch_folder, write_atomically
from batchpizza.progress import setup_logging, summary_line
from batchpizza.records import Summary, Tally

# What the driver does itself; the actors never see these options.
_DRIVER_ONLY = (
    *("checkpoint", "dry_run", "format", "limit", "mock", "restart", "summary_json"),
    *("progress", "progress_every", "quiet", "verbose"),
)
_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl"}
# The blocks a single input file is split into: four for each of the command's actors, so that
# each has work while the others finish theirs (the output has as many parts).
SPLIT_ONE_FILE = 16  # 4 x dataset.DEFAULT_ACTORS (not imported here: it imports Ray)


def run(input: str, output: str, *, address: str = "auto", **options: Any) -> Summary:
    """Run the command; returns the summary (its `exit_code` is the command's). Errors a user
    can act on raise BatchpizzaError subclasses, an interrupt Interrupted, having written the
    --summary-json as the single-process run does."""
    return ClusterRun(input, output, address, options).run()


def output_format(output: str, chosen: str | None) -> str:
    """parquet or jsonl: --format, else the output's extension, else parquet (a folder name)."""
    if chosen == "openai-batch":
        raise UsageError(
            "--format openai-batch writes one file of OpenAI batch lines, and --ray writes a folder "
            "of parts: use --format jsonl, or run without --ray"
        )
    by_name = _FORMATS.get(Path(output.rstrip("/")).suffix.lower())
    if chosen is not None and by_name is not None and chosen != by_name:
        raise UsageError(f"output {output!r}: --format {chosen} does not match the extension")
    return chosen or by_name or "parquet"


class ClusterRun:
    def __init__(self, input: str, output: str, address: str, options: Mapping[str, Any]) -> None:
        self.started = time.monotonic()
        given = {k: v for k, v in options.items() if v is not None}
        if isinstance(given.get("params"), tuple):
            given["params"] = list(given["params"])
        if input == "-":
            raise UsageError("--ray reads files, not standard input: give a file, folder or URI")
        self.input = input
        self.address = address
        self.output = OutputFolder(output)
        self.format = output_format(output, given.get("format"))
        self.quiet = bool(given.get("quiet"))
        self.verbose = bool(given.get("verbose"))
        self.dry_run = bool(given.get("dry_run"))
        self.restart = bool(given.get("restart"))
        self.mock = bool(given.get("mock"))
        self.limit: int | None = given.get("limit")
        if given.get("samples", 1) != 1:
            raise UsageError("--repeat is not supported with --ray yet: run without --ray")
        if self.limit is not None and self.limit < 0:
            raise UsageError("--limit must be 0 or more")
        self.summary_json: str | None = given.get("summary_json")
        # A mock run's answers are not the service's: its own checkpoint, as without --ray.
        suffix = ".mock-checkpoint" if self.mock else ".checkpoint"
        checkpoint = given.get("checkpoint") or output.rstrip("/") + suffix
        self.checkpoint = checkpoint if is_uri(checkpoint) else str(Path(checkpoint).resolve())
        self.options = {k: v for k, v in given.items() if k not in _DRIVER_ONLY}
        if self.mock:  # the mock's own default rate, as without --ray (the mock is ours to start)
            self.options.setdefault("rate", DEFAULT_MOCK_RATE)
        # The checks answer() makes, made before a cluster is started for nothing.
        self.config = RunConfig.from_options("<ray>.parquet", "<ray>.parquet", **self.options)
        self.config.refuse_on_ray()
        self.status: dict[str, object] = {}
        self._signals = Signals()
        self._reported = False
        # A local JSON lines input, read as without --ray and staged for the cluster (prepare).
        self.staged: Staged | None = None
        self._interrupted_tally: Tally | None = None
        self._before: Any = None  # the ids the checkpoint held answers for at the start

    def run(self) -> Summary:
        # The driver's warnings as a run without --ray says them (timestamped; none under -q).
        setup_logging(self.quiet, self.verbose, self.config.log_format)
        self.check_paths()
        if importlib.util.find_spec("ray") is None:
            raise UsageError("--ray needs Ray: pip install 'batchpizza[ray]'")
        try:
            with self._signals:
                summary = self._dry_run() if self.dry_run else self._locked()
        except KeyboardInterrupt:
            signum = self._signals.signum or signal.SIGINT
            tally = self._interrupted_tally
            summary = self._summary(tally, 128 + signum, stopped="signal", interrupted=True)
            self._report(summary)
            saved = saved_in(tally, self.checkpoint, dry_run=self.dry_run)
            raise Interrupted(
                f"{signal.Signals(signum).name}: stopped; {saved}. Rerun the same command to resume.",
                signum,
                summary,
            ) from None
        except BatchpizzaError as exc:
            if not self._reported:  # so a monitor never reads an older run's summary
                self._report(self._summary(None, exc.exit_code))
            raise
        self._report(summary)
        return summary

    def check_paths(self) -> None:
        check_places(self.input, self.output, self.checkpoint, self.summary_json)

    def prepare(self, folder: str) -> bool:
        """Refuse, before a cluster starts, what the actors would find row by row (or not at
        all); a local JSON lines input is read as a run without --ray reads it, its bad rows
        refused as there, and staged in `folder` (distributed.staging). False for an input
        without a row, which needs no cluster."""
        # A file: a folder named so (a --ray run's JSON lines output) is Ray's to read, as
        # before; a run without --ray reads no folder of JSON lines to match.
        if is_json_lines(self.input) and not is_uri(self.input) and Path(self.input).is_file():
            typed = self.format == "parquet" and not self.dry_run
            self.staged = stage(self.input, self.config, self.limit, folder, typed=typed)
            return self.staged.rows > 0
        check_input(self.input, self.config, self.limit)
        return True

    @property
    def source(self) -> str:
        """What the cluster and the driver's checks read: the staged input, or the input."""
        return self.input if self.staged is None else self.staged.place

    @property
    def layout(self) -> Layout:
        """The output's columns as a run without --ray writes them (folders.write_part)."""
        return IdFirst(self.config.fields_named[2]) if self.staged is None else self.staged.carried

    def _dry_run(self) -> Summary:
        from batchpizza.distributed.planning import count_answered, print_plan

        # By row id and request fingerprint, as the actors match answers: a new model,
        # parameters or prompt shows as rows to send.
        parts = None if self.restart else self.checkpoint
        # In the temp folder: a dry run creates nothing in the checkpoint's (maybe not made yet,
        # or a URI), nor takes its lock, and a run going on stages there under the same names.
        with scratch_folder() as scratch:
            if self.prepare(scratch):
                rows, answered = count_answered(self.source, parts, self.config, self.limit)
            else:
                rows = answered = 0
        checkpoint = None if self.restart else self.checkpoint
        print_plan(rows, answered, self.config, checkpoint)
        return self._summary(Tally(rows=rows, answered=answered), 0)

    def _locked(self) -> Summary:
        # On the checkpoint folder's file system (by name only for a URI checkpoint).
        checkpoint = self.checkpoint if is_uri(self.checkpoint) else Path(self.checkpoint)
        lock = RunLock(self.output.local or Path(self.output.place), checkpoint, folder=True)
        try:
            lock.acquire()
        except LockedError:
            self._report(self._summary(None, 75, stopped="locked"))
            raise
        emptied = False
        try:
            self.output.recover()
            if self.restart:  # an input without a row too: its answers are forgotten
                delete_folder(self.checkpoint, keep_folder=True)  # the lock is on the folder
            self._before = answered_ids(self.checkpoint)
            if not self.prepare(self.checkpoint):  # no row: no cluster
                write_empty(self.output.target(), self.format, self.config)
                self.output.commit()
                emptied = self.restart  # an emptied folder is no checkpoint: it goes
                return summarize(Tally(), 0, {}, **self._where())
            if not self.restart:
                kept = KeptOutput(
                    self.source, self.checkpoint, self.options, self.limit, self.layout
                )
                rows = kept.complete()
                if rows is not None:  # nothing to send: no cluster (see distributed.kept)
                    kept.write(self.output.target(), self.format)
                    self.output.commit()
                    return summarize(Tally(rows=rows, answered=rows), 0, {}, **self._where())
            with contextlib.ExitStack() as stack:
                if self.quiet:
                    stack.enter_context(quiet_ray())
                if self.mock:
                    self.options["base_url"] = stack.enter_context(mock_server_process())
                return self._on_ray()
        except KeyboardInterrupt:
            self._interrupted_tally = self._kept_tally()  # before the staged input goes
            raise
        finally:
            if self.staged is not None:
                self.staged.remove()
            self.output.discard()
            lock.release(discard=emptied)

    def _on_ray(self) -> Summary:
        id_field = self.config.fields_named[2]
        done = self._before  # the rows this run sends are the others (for `retries`)
        if self.staged is None:
            require_id(input_dataset(self.input).schema.names, id_field)
        else:
            id_field = staging.ID  # the ids its scan gave
        import ray

        from batchpizza.distributed import dataset

        # auto: RAY_ADDRESS or a running local cluster if there is one, else a new local one.
        address = None if self.address == "auto" else self.address
        level = logging.ERROR if self.quiet else logging.INFO
        standing = raylets_here()  # a standing cluster's, if this process is their parent
        try:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        except ConnectionError as exc:
            raise UsageError(
                f"cannot join the Ray cluster at {self.address}: {exc}. Check the address (or "
                "RAY_ADDRESS); a cluster with token authentication needs RAY_AUTH_MODE=token and "
                "its token here (~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from None
        self._signals.trap()  # ray.init put a SIGTERM handler of its own in place
        # A cluster started here, not the standing one: its leftovers.
        watchdog = Watchdog.start(raylet_started_here(standing))
        lazy = None
        try:
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            # The error an actor's engine raised (a wrong API key), not Ray Data's wrapper of it,
            # which keeps only its text: see user_error.
            context.raise_original_map_exception = True
            if self.quiet:
                context.enable_progress_bars = False
                # Not even errors: a user's (a wrong key) is said in a line, a bug's shows anyway.
                logging.getLogger("ray.data").setLevel(logging.CRITICAL)
            source = _absolute(self.source)
            if self.staged is not None:
                ds = ray.data.read_parquet(source)
            elif is_json_lines(self.input):
                # Named by the user: read whatever its extension (Ray's list lacks .ndjson).
                # Arrow's JSON reader, which reads JSON lines and types nested fields (messages as
                # a list of structs); `lines=True` takes pandas', which made them pickled Python
                # objects, NaN in the rows without them.
                ds = ray.data.read_json(source, file_extensions=None)
            else:
                ds = ray.data.read_parquet(source)
            if not is_uri(self.input) and Path(self.input).is_file():
                # A file is read as one block, which one actor runs with its share of
                # --concurrency (a quarter): split, every actor has blocks of it to run.
                ds = ds.repartition(SPLIT_ONE_FILE)
            if self.limit is not None:
                ds = ds.limit(self.limit)
            options = deadline_left(self.options, self.config.deadline_s, self.started)
            lazy = dataset.answer(ds, checkpoint=self.checkpoint, **options)
            stopping = lazy  # typed for the closure: the Dataset the grace's stop is for
            self._signals.grace(lambda: dataset.stop(stopping, "signal"), self.config.grace)
            try:
                answered = lazy.materialize()
            except Exception as exc:
                found = user_error(exc)
                if found is None:
                    raise
                raise found from None
            self._signals.check()  # a signal in the grace: the run stopped, no output
            columns = answered.select_columns([id_field, "finish_reason", "attempts"])
            batches = columns.iter_batches(batch_format="pyarrow", batch_size=None)
            tally, sent = tally_of(batches, id_field, done)
            self.status = dataset.status(lazy)
            self._write(ray, answered)
        finally:
            if lazy is not None and not self.status:
                # An interrupt: what the controller counted, for the summary.
                with contextlib.suppress(Exception):
                    self.status = dataset.status(lazy)
            ray.shutdown()
            if watchdog is not None:
                watchdog.close()
        return summarize(tally, sent, self.status, **self._where())

    def _write(self, ray: Any, answered: Any) -> None:
        """One part per block, written by tasks where the data is; a local output by tasks on
        this machine, whose disk it is on, then renamed into place."""
        target = self.output.target()
        options: dict[str, Any] = {}
        if self.output.local is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
        task = ray.remote(write_part).options(**options)
        blocks = answered.to_arrow_refs()
        layout = self.layout
        ray.get(
            [task.remote(block, target, i, self.format, layout) for i, block in enumerate(blocks)]
        )
        self.output.commit()

    def _kept_tally(self) -> Tally | None:
        """After an interrupt: the input's rows, those the checkpoint holds answers for, the
        rest pending (None if that cannot be read)."""
        from batchpizza.distributed.planning import count_interrupted

        if self._before is None:  # stopped before the checkpoint was looked at
            return None
        try:  # by id and request fingerprint, as the dry run and the actors count
            rows, answered = count_interrupted(
                self.source, self.checkpoint, self.config, self.limit, self._before, self.staged
            )
        except (BatchpizzaError, OSError):
            return None
        return Tally(rows=rows, answered=answered)

    def _where(self, output: bool = True) -> dict[str, Any]:
        return {
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "output": self.output.place if output else None,
            "checkpoint": self.checkpoint,
        }

    def _summary(
        self,
        tally: Tally | None,
        exit_code: int,
        *,
        stopped: str | None = None,
        interrupted: bool = False,
    ) -> Summary:
        """The summary of a run that wrote no output (a dry run says where it would go)."""
        requests = count(self.status, "attempts_reported")
        return Summary.of(
            tally,
            requests=requests,
            exit_code=exit_code,
            stopped=stopped,
            rate=count(self.status, "rate") or None,
            interrupted=interrupted,
            **self._where(output=self.dry_run),
        )

    def _report(self, summary: Summary) -> None:
        self._reported = True
        if not self.quiet:
            with contextlib.suppress(OSError, ValueError):  # a closed stderr must not fail a run
                line = summary_line(summary, self.config.log_format)
                print(line, file=sys.stderr, flush=True)
        if self.summary_json and not self.dry_run:
            write_atomically(Path(self.summary_json), summary.to_json())


def _absolute(place: str) -> str:
    """A local path as Ray's workers need it (they do not run in the driver's folder)."""
    return place if is_uri(place) else filesystem(place)[1]
