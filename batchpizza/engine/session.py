"""What one run holds while it sends: its one HTTP session, and the garbage collector's
threshold raised for as long as requests are in flight."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

import aiohttp

# The cyclic garbage collector looks at the young objects every 700 net allocations of container
# objects (gc.get_threshold()[0]). The requests in flight alone hold more than that (measured: 70
# tracked objects each, 9,000 at concurrency 64), so at zero latency it ran 900 times in a
# 20,000-row run, for 0.22 s of 3.3 s CPU, and freed next to nothing: the objects of a request die
# by reference count (peak RSS the same with the collector off). During a run its threshold is
# raised to twice what the requests in flight hold: 2 collections in that run instead of 900.
YOUNG_OBJECTS_PER_REQUEST = 150


@contextlib.contextmanager
def collector_threshold(young: int) -> Iterator[None]:
    """Raise the collector's first threshold to at least `young` for the block, then put it back
    (unless something else changed it meanwhile, e.g. another run in this process)."""
    before = gc.get_threshold()
    if before[0] >= young:
        yield
        return
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        if gc.get_threshold()[0] == young:
            gc.set_threshold(*before)


def new_session(
    concurrency: int, traces: Sequence[aiohttp.TraceConfig] = ()
) -> aiohttp.ClientSession:
    """The session one run (or one Ray actor) sends through: at most `concurrency` connections;
    `traces` for a Ray actor's check of its slot as each request is written.
    trust_env stays off: the provider resolved the proxy once, instead of per request."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(connector=connector, trace_configs=list(traces) or None)
