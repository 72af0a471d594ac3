"""A cluster run's rerun with nothing to send: when the checkpoint's parts answer every row of
the input (each for the request it asks now), the output is written from them on the driver
and no cluster is started (a rerun that sent nothing took 27.7 s, most of it Ray's start). The
rows are read and matched as the actors match them (Answerer.kept_batch); one row without its
answer, or one bad row (the actors write it as invalid), and the run goes to the cluster."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from batchpizza.distributed.folders import input_dataset, input_ids, require_id, write_part
from batchpizza.distributed.parts import ID, PartStore
from batchpizza.distributed.staging import is_staged
from batchpizza.distributed.worker import Answerer, part_schema
from batchpizza.errors import InputError
from batchpizza.providers.factory import extra_columns

if TYPE_CHECKING:
    import pyarrow as pa

    from batchpizza.config import RunConfig
    from batchpizza.distributed.folders import Layout

# Options that the driver and the controller own; an actor never sees them.
CLUSTER_OPTIONS = ("rate", "deadline", "patience", "concurrency", "checkpoint", "restart")
_ANSWER_OPTIONS = ("actors", "batch_size", "num_cpus")  # batchpizza.ray.answer's own
_READ_ROWS = 4096  # rows matched at a time
_PART_ROWS = 65536  # rows an output part holds at most


class KeptOutput:
    """The output of `input` (its first `limit` rows) as the checkpoint's answers make it."""

    def __init__(
        self,
        input: str,
        checkpoint: str,
        options: Mapping[str, Any],
        limit: int | None,
        layout: Layout | None = None,
    ) -> None:
        """`layout`: the output's columns as a run without --ray has them (folders.write_part)."""
        self.input = input
        self.limit = limit
        self.layout = layout
        actor_options = {
            k: v for k, v in options.items() if k not in (*CLUSTER_OPTIONS, *_ANSWER_OPTIONS)
        }
        extra = extra_columns(str(options.get("provider", "pizzagpt")))
        self._done = PartStore(checkpoint, create=False).read_all(part_schema(extra))
        # The actors' own reading of rows and keys; it sends nothing, so needs no controller.
        self._answerer = Answerer(None, options=actor_options, share=1, done=self._done)  # type: ignore[arg-type]

    def complete(self) -> int | None:
        """How many rows the output has, when the checkpoint answers every one; else None. A
        pass of its own, so that nothing is written (nor held) for a run that must send."""
        import pyarrow.compute as pc

        if self._done.num_rows == 0:
            return None
        # First the ids alone, vectorised (as the dry run counts): a resume with rows left to
        # send goes to the cluster without reading every row's prompt here.
        ids = input_ids(self.input, self._answerer.id_field, self.limit)
        if not pc.all(pc.is_in(ids, value_set=self._done.column(ID).combine_chunks())).as_py():
            return None
        rows = 0
        for table in self._answered():
            if table is None:
                return None
            rows += table.num_rows
        return rows

    def write(self, target: str, fmt: str) -> None:
        """The output's parts into `target` (after `complete` said every row is answered)."""
        import pyarrow as pa

        pending: list[pa.Table] = []
        index = 0
        for table in self._answered():
            if table is None:  # the checkpoint changed since `complete`: under the lock, never
                raise InputError(f"the input {self.input} changed during the run; rerun")
            pending.append(table)
            if sum(t.num_rows for t in pending) >= _PART_ROWS:
                write_part(pa.concat_tables(pending), target, index, fmt, self.layout)
                pending, index = [], index + 1
        if pending or index == 0:
            block = pa.concat_tables(pending) if pending else self._empty()
            write_part(block, target, index, fmt, self.layout)

    def _answered(self) -> Iterator[pa.Table | None]:
        import pyarrow as pa

        dataset = input_dataset(self.input)
        if not is_staged(dataset.schema.names):  # a staged input has the ids its scan gave
            require_id(dataset.schema.names, self._answerer.id_field)
        left = self.limit
        try:
            for record_batch in dataset.to_batches(batch_size=_READ_ROWS):
                if left == 0:
                    return
                batch = pa.Table.from_batches([record_batch])
                if left is not None:
                    batch = batch.slice(0, left)
                    left -= batch.num_rows
                yield self._answerer.kept_batch(batch)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read the input {self.input}: {exc}") from None

    def _empty(self) -> pa.Table:
        dataset = input_dataset(self.input)
        return (
            self._answerer.kept_batch(dataset.schema.empty_table()) or dataset.schema.empty_table()
        )


def write_empty(target: str, fmt: str, config: RunConfig) -> None:
    """An empty input's output: one part of no rows, with the id and the result columns."""
    import pyarrow as pa

    from batchpizza.sinks.values import result_fields

    id_field = pa.field(config.fields_named[2], pa.string())
    fields = [id_field, *result_fields(extra_columns(config.provider))]
    write_part(pa.schema(fields).empty_table(), target, 0, fmt)
