"""The installed version, read from the package metadata when first asked for: importing
importlib.metadata is not part of every start-up."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("batchpizza")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "0.0.0"
