"""Results are written atomically: an interrupted write leaves the old file, and every output
of the packages goes through the atomic helpers."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from trainable import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
WRITE = re.compile(r"\.write_(text|bytes)\(|open\(.*[\"'][wax]b?\+?[\"']|torch\.save\(")
# the only direct writes: the helper itself, a checkpoint serialised to memory first, the
# line-by-line epoch log of `clustune train`
ALLOWED = {
    "trainable/_files.py": 'os.fdopen(fd, "wb")',
    "trainable/_trainer.py": "torch.save(self.state_dict(), buffer)",
    "search/_cli_train.py": '(out / "metrics.jsonl").open("w")',
}


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_outputs_are_written_only_through_the_atomic_helpers():
    direct = []
    for package in ("trainable", "search", "analysis"):
        for path in sorted((ROOT / package).glob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name == "analysis/testing.py":  # writes test fixtures, not clustune's outputs
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if WRITE.search(line) and ALLOWED.get(name, "\0") not in line:
                    direct.append(f"{name}:{number}: {line.strip()}")
    assert not direct, "write these through trainable.atomic_write_*:\n" + "\n".join(direct)


def test_the_folder_is_flushed_after_the_rename(tmp_path, monkeypatch):
    """A power cut after the rename keeps the new entry only once the folder is on disk."""
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "replace", lambda *a: (events.append("rename"), real_replace(*a)))

    def fsync(fd: int) -> None:
        events.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "result.json", "new")
    assert events == ["file", "rename", "folder"]
    assert (tmp_path / "result.json").read_text() == "new"
