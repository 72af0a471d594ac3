"""The checkpoint of a cluster run: answered rows as Parquet parts in a folder on shared storage
(a local or network path, or any URI pyarrow.fs understands: s3://, gs://, abfs://, hdfs://).

    ROOT/parts/<batch>/<ids>.parquet   answered rows of a batch still running, written in small
                                       groups before their workers send again (so a crash
                                       re-sends at most what was in flight)
    ROOT/parts/<batch>.parquet         the batch's answered rows, once the batch is done; its
                                       small parts are then deleted
    ROOT/meta.json                     the learned rate under rate="auto", kept as it changes

`<batch>` is a hash of the batch's row ids and `<ids>` of the part's: writing the same part twice
writes the same file (idempotent), and a batch Ray runs again after an actor died finds what its
first attempt answered. A reader takes every part, each row id once. Only answered rows are
kept: failed and refused rows are sent again by a rerun, as with the SQLite checkpoint. Each row
carries its request's fingerprint (provider, model, parameters, prompt as sent), so a row whose
prompt, model or parameters changed since is asked again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

PARTS = "parts"
META = "meta.json"  # the learned rate, for the next run to start from
ID = "id"  # the row id column of a part, always a string
# The fingerprint of the request a row was answered for (rows.fingerprint_key; before fingerprints the
# prompt's digest alone, which no fingerprint equals): a rerun takes an answer only for the same
# id *and* the same request. Parts written before it existed have none; their rows are matched by
# id alone, as they were then.
DIGEST = "digest"


def key_of(ids: Iterable[str]) -> str:
    """A short stable name for a set of row ids (their order matters: a batch's order is fixed)."""
    digest = hashlib.blake2b(digest_size=12)
    for row_id in ids:
        digest.update(row_id.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class PartStore:
    def __init__(self, uri: str, *, create: bool = True) -> None:
        """The store at `uri`; `create=False` only reads (a dry run creates nothing)."""
        import pyarrow.fs as pafs

        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(uri).resolve())
        self.uri = uri
        self._fs: pafs.FileSystem = fs
        self._local = isinstance(fs, pafs.LocalFileSystem)
        self._root = f"{path.rstrip('/')}/{PARTS}"
        self._meta = f"{path.rstrip('/')}/{META}"
        if create:
            fs.create_dir(self._root, recursive=True)

    def meta(self) -> dict[str, Any]:
        """What the last run kept besides answers (the learned rate); {} if nothing."""
        if not self._exists(self._meta):
            return {}
        with self._fs.open_input_stream(self._meta) as stream:
            try:
                found = json.loads(stream.read())
            except ValueError:
                return {}  # torn by a crash on a store without atomic writes: learn again
        return found if isinstance(found, dict) else {}

    def save_meta(self, **values: Any) -> None:
        data = json.dumps({**self.meta(), **values}).encode()
        self._put(self._meta, lambda path: self._write_bytes(path, data))

    def read_all(self, schema: pa.Schema) -> pa.Table:
        """Every answered row of every part, each (id, digest) once."""
        return self._read(self._files(self._root, recursive=True), schema)

    def read_batch(self, key: str, schema: pa.Schema) -> pa.Table:
        """What an earlier attempt at this batch answered (empty for a new batch)."""
        files = [f for f in (f"{self._root}/{key}.parquet",) if self._exists(f)]
        return self._read([*files, *self._files(f"{self._root}/{key}", recursive=False)], schema)

    def write_part(self, key: str, rows: pa.Table) -> None:
        """Some answered rows of batch `key`, as a part of their own."""
        ids = rows.column(ID).to_pylist()
        self._fs.create_dir(f"{self._root}/{key}", recursive=True)
        self._write(f"{self._root}/{key}/{key_of(ids)}.parquet", rows)

    def seal(self, key: str, rows: pa.Table) -> None:
        """All answered rows of batch `key` in one part, then its small parts deleted."""
        self._write(f"{self._root}/{key}.parquet", rows)
        folder = f"{self._root}/{key}"
        if self._fs.get_file_info(folder).type.name == "Directory":
            self._fs.delete_dir(folder)

    def _write(self, path: str, rows: pa.Table) -> None:
        import pyarrow.parquet as pq

        self._put(path, lambda where: pq.write_table(rows, where, filesystem=self._fs))

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self._fs.open_output_stream(path) as stream:
            stream.write(data)

    def _put(self, path: str, write: Callable[[str], None]) -> None:
        if not self._local:  # an object store's PUT appears whole or not at all
            write(path)
            return
        # A local or network folder: written aside (a dot name readers skip) and renamed.
        head, _, name = path.rpartition("/")
        aside = f"{head}/.{name}.{uuid.uuid4().hex[:8]}"
        write(aside)
        self._fs.move(aside, path)

    def _exists(self, path: str) -> bool:
        return bool(self._fs.get_file_info(path).type.name == "File")

    def _files(self, folder: str, *, recursive: bool) -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=recursive)
        return sorted(
            info.path
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_"))
        )

    def _read(self, files: Sequence[str], schema: pa.Schema) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [_conform(pq.read_table(f, filesystem=self._fs), schema) for f in files]
        if not tables:
            return schema.empty_table()
        return first_of_each(pa.concat_tables(tables))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part as `schema` has it; a part from before a column (the digest, the token counts)
    gets one of nulls."""
    import pyarrow as pa

    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def first_of_each(table: pa.Table) -> pa.Table:
    """`table` with each (id, digest) once (its first row): answers of one id for different
    prompts (in parts of different batches) are all kept, and a reader takes the one whose
    prompt matches. (The same batch run again replaces its part: the new prompt's answer.)"""
    seen: set[Any] = set()
    keep = []
    digests = table.column(DIGEST).to_pylist() if DIGEST in table.column_names else None
    for i, row_id in enumerate(table.column(ID).to_pylist()):
        key = (row_id, digests[i] if digests is not None else None)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return table if len(keep) == table.num_rows else table.take(keep)
