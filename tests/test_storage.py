"""Durable files: a write replaces its target whole or not at all, beside it, and a failure names the path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from metaclinic.errors import DataError, WriteError
from metaclinic.experiment.storage import (
    AtomicCheckpointIO,
    UnsafeCheckpointError,
    load_checkpoint,
    remove_partial_files,
    write_atomically,
)


def test_a_write_replaces_the_file_whole(tmp_path: Path):
    target = tmp_path / "run" / "report.json"
    write_atomically(target, "first")
    write_atomically(target, b"second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_a_write_that_fails_midway_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous, complete")

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteError, match=rf"^{target}: could not be written \(No space left on device\)$"):
        write_atomically(target, b"new" * 1000)
    assert target.read_bytes() == b"previous, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_folder_that_became_a_file_is_named(tmp_path: Path):
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(WriteError, match=r"checkpoints/last.ckpt: could not be written \(Not a directory\)"):
        write_atomically(tmp_path / "checkpoints" / "last.ckpt", b"x")


def test_checkpoints_never_pass_through_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Lightning's own save stages the file in $TMPDIR and moves it: a truncating copy across filesystems.
    tmpdir = tmp_path / "elsewhere"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = {"state_dict": {"w": torch.arange(5.0)}, "global_step": 3}
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
    assert not list(tmpdir.iterdir())
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.arange(5.0))


def test_partial_files_of_killed_saves_are_removed(tmp_path: Path):
    (tmp_path / ".last.ckpt.4242.partial").write_bytes(b"half")
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    assert [p.name for p in remove_partial_files(tmp_path)] == [".last.ckpt.4242.partial"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_bad_checkpoints_get_one_line_reasons(tmp_path: Path):
    empty, truncated, plain = tmp_path / "empty.ckpt", tmp_path / "truncated.ckpt", tmp_path / "plain.ckpt"
    empty.write_bytes(b"")
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(DataError, match=r"empty.ckpt: the checkpoint is empty \(0 bytes\)"):
        load_checkpoint(empty)
    with pytest.raises(DataError, match=r"truncated.ckpt: not a readable checkpoint, truncated or corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(DataError, match=r"plain.ckpt: not a Lightning checkpoint \(it has no state_dict\)"):
        load_checkpoint(plain)
    with pytest.raises(DataError, match=r"missing.ckpt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint(evil)
    message = str(error.value)
    assert "refused for safety" in message and "never load it with weights_only=False" in message
    assert "\n" not in message and "code ran" not in capsys.readouterr().out
    assert isinstance(error.value.__context__, pickle.UnpicklingError | type(None))
