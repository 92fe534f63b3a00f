"""The move container's script (constructs_lib/scripts/move-data.sh), run by the real POSIX shell on real directories:
ClickHouse's data reaches the platform's file system whole, once, and nothing is ever overwritten or lost."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.assembly import ROOT

SCRIPT = ROOT / "constructs_lib" / "scripts" / "move-data.sh"
DONE = ".platform-data-moved"


def _run(old: Path, new: Path, *, remove: bool = False, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or os.environ["PATH"], "MOVE_FROM": str(old), "MOVE_TO": str(new),
           "MOVE_REMOVE_SOURCE": str(remove).lower()}
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)


def _tree(root: Path) -> dict[str, object]:
    """Every entry below root but the markers: a file's bytes and mode, a link's target, a directory."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.name.startswith(".platform-data-"):
            continue
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_dir():
            found[name] = "directory"
        else:
            found[name] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return found


@pytest.fixture
def old(tmp_path) -> Path:
    """A ClickHouse data directory in miniature: nested parts, an empty directory, a link, a private file."""
    root = tmp_path / "old"
    (root / "store" / "a1b" / "all_1_1_0").mkdir(parents=True)
    (root / "store" / "a1b" / "all_1_1_0" / "data.bin").write_bytes(os.urandom(70_000))
    (root / "metadata").mkdir()
    (root / "metadata" / "langfuse.sql").write_text("ATTACH DATABASE langfuse ENGINE = Atomic\n")
    (root / "tmp").mkdir()
    (root / "status").write_text("PID: 1\n")
    (root / "status").chmod(0o600)
    (root / "data").mkdir()
    (root / "data" / "langfuse").symlink_to("../store/a1b")
    return root


@pytest.fixture
def new(tmp_path) -> Path:
    (tmp_path / "new").mkdir()
    return tmp_path / "new"


def test_copies_everything_once_and_marks_it(old, new):
    result = _run(old, new)
    assert result.returncode == 0, result.stderr
    assert _tree(new) == _tree(old) and len(_tree(old)) == 10
    assert (new / DONE).read_text().startswith("copied 10 entries from ")
    assert not (new / ".platform-data-moving").exists()
    assert _tree(old)  # the old copy stays


def test_a_second_start_copies_nothing_and_keeps_what_the_service_wrote(old, new):
    assert _run(old, new).returncode == 0
    (new / "store" / "written-after-the-move").write_text("new trace")
    (old / "metadata" / "langfuse.sql").write_text("changed in the old copy after the move")
    result = _run(old, new)
    assert result.returncode == 0 and "already done" in result.stdout
    assert (new / "store" / "written-after-the-move").read_text() == "new trace"
    assert (new / "metadata" / "langfuse.sql").read_text().startswith("ATTACH")


def test_a_copy_cut_short_is_made_again(old, new):
    (new / ".platform-data-moving").write_text("")
    (new / "store").mkdir()
    (new / "store" / "half-copied.bin").write_bytes(b"\0" * 10)
    result = _run(old, new)
    assert result.returncode == 0, result.stderr
    assert _tree(new) == _tree(old)


def test_a_directory_with_data_of_its_own_is_never_overwritten(old, new):
    """E.g. ClickHouse already ran on the new directory (old_clickhouse_data was "none"): nothing is cleared."""
    (new / "store").mkdir()
    (new / "store" / "live.bin").write_text("live data")
    result = _run(old, new)
    assert result.returncode == 1 and "holds data that no move put there" in result.stderr
    assert (new / "store" / "live.bin").read_text() == "live data" and not (new / DONE).exists()


def _with_cp(tmp_path: Path, script: str) -> str:
    """A PATH whose `cp` is `script` (a shell script body)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "cp").write_text(f"#!/bin/sh\n{script}\n")
    (tools / "cp").chmod(0o755)
    return f"{tools}:{os.environ['PATH']}"


def test_a_failed_copy_is_not_marked_and_the_service_does_not_start(old, new, tmp_path):
    """cp fails half-way (a full file system, an I/O error): the script exits non-zero, unmarked."""
    path = _with_cp(tmp_path, "echo 'cp: error writing: No space left on device' >&2; exit 1")
    result = _run(old, new, path=path)
    assert result.returncode != 0
    assert not (new / DONE).exists() and (new / ".platform-data-moving").exists()
    assert _run(old, new).returncode == 0 and _tree(new) == _tree(old)  # the next start makes it again


def test_a_copy_that_differs_is_not_marked(old, new, tmp_path):
    """A copy that leaves a file short (cp exits 0 but the data differs) fails the comparison."""
    result = _run(old, new, path=_with_cp(tmp_path, '/bin/cp "$@" && : > "$3store/a1b/all_1_1_0/data.bin"'))
    assert result.returncode == 1 and "differs" in result.stderr
    assert not (new / DONE).exists()


def test_remove_empties_the_old_copy_only_once_the_move_is_done(old, new):
    (new / "store").mkdir()
    (new / "store" / "live.bin").write_text("live data")
    refused = _run(old, new, remove=True)
    assert refused.returncode == 1 and _tree(old)  # no copy done: the old data is not touched
    (new / "store" / "live.bin").unlink()
    (new / "store").rmdir()

    result = _run(old, new, remove=True)
    assert result.returncode == 0, result.stderr
    assert len(_tree(new)) == 10 and list(old.iterdir()) == []
