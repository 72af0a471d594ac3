"""The checkpoint: the SQLite file that makes reruns cheap, its scan index and the run lock.

Every SQL statement on the checkpoint's tables lives in this package (store.py, scan.py)."""

from batchpizza.checkpoint.lock import RunLock, is_locked
from batchpizza.checkpoint.scan import ScanIndex
from batchpizza.checkpoint.store import Checkpoint

__all__ = ["Checkpoint", "RunLock", "ScanIndex", "is_locked"]
