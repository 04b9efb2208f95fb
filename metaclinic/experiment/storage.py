"""Files of a run that are complete or absent, never half-written, and writes that fail loudly.

A checkpoint, report or config is written to a temporary file beside its target (same directory, so the
same filesystem), flushed and ``fsync``ed, then moved over the target with ``os.replace``: atomic on
POSIX, so a reader (or a resume after SIGKILL) sees the previous complete file or the new complete file.
Lightning's own save writes the temporary file under ``$TMPDIR`` and moves it; when ``$TMPDIR`` is on
another filesystem (tmpfs, a node-local scratch disk) that move is a copy that truncates the target first,
and fsspec's commit swallows a failed write when the target exists. A write that fails here raises
:class:`~metaclinic.errors.WriteError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from metaclinic.errors import DataError, WriteError

log = logging.getLogger("metaclinic")

PARTIAL_SUFFIX = ".partial"  # temporary files are ".<name>.<pid>.partial", beside their target


class UnsafeCheckpointError(DataError):
    """A checkpoint holds pickled Python objects, which metaclinic refuses to load (they could run code)."""


def write_atomically(path: str | Path, data: bytes | str) -> None:
    """Replaces ``path`` by ``data`` (text is UTF-8): the old file stays whole until the new one is."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        if not path.parent.exists():  # (a file in the folder's place fails below: "Not a directory")
            path.parent.mkdir(parents=True)
        with open(partial, "wb") as file:
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        _sync_directory(path.parent)  # the rename itself survives a power cut
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise WriteError(f"{path}: could not be written ({error.strerror or error})") from error


def _sync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform or filesystem without directory descriptors: the data itself is synced
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def remove_partial_files(directory: Path) -> list[Path]:
    """Deletes the temporary files that saves killed midway left in ``directory``; returns them."""
    removed = []
    for partial in sorted(directory.glob(f".*{PARTIAL_SUFFIX}")):
        with contextlib.suppress(OSError):
            partial.unlink()
            removed.append(partial)
    if removed:
        log.info("Removed %d partial file(s) of interrupted saves in %s", len(removed), directory)
    return removed


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint file as data (``weights_only``: loading never runs code), or an error saying why not."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: the checkpoint is empty (0 bytes), the mark of a save that was interrupted")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} was not loaded: it holds Python objects other than tensors and plain data, which could "
            f"run code when loaded ({_unpickling_reason(error)}). It was refused for safety: re-save it from "
            "a trusted source as a plain state dict; never load it with weights_only=False."
        ) from None
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint") from None
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: not a readable checkpoint, truncated or corrupt ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def _unpickling_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's refusal that names what the file tried to load, without its advice to
    retry with ``weights_only=False``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "global" in line.lower() and "weights_only" not in line]
    return (named or lines or [type(error).__name__])[0]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic, loudly failing saves and loads that explain a bad file.

    Remote URLs (``s3://`` ...) keep Lightning's fsspec path: object stores replace whole objects anyway.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(path, buffer.getbuffer())

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return load_checkpoint(path, map_location if map_location is not None else "cpu")
