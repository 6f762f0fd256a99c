"""`lsmerge.io.atomic`: atomic file writes that leave nothing behind when they fail, parent
folders made and taken back, the targets of aborted writes recorded."""

from __future__ import annotations

import errno
import os

import pytest

from lsmerge.io.atomic import (
    aborted_outputs,
    atomic_path,
    atomic_paths,
    make_dirs,
    remove_empty_dirs,
    write_bytes_atomic,
    write_text_atomic,
)


def test_make_dirs_records_only_what_it_made(tmp_path):
    (tmp_path / "a").mkdir()
    made = make_dirs(tmp_path / "a" / "b" / "c")
    assert made == [tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert make_dirs(tmp_path / "a" / "b" / "c") == []
    (tmp_path / "a" / "b" / "keep").write_text("x")
    remove_empty_dirs(made)
    assert (tmp_path / "a" / "b").is_dir() and not (tmp_path / "a" / "b" / "c").exists()


def test_make_dirs_under_a_file_is_not_a_directory_and_makes_nothing(tmp_path):
    (tmp_path / "f").write_text("x")
    for path in (tmp_path / "f", tmp_path / "f" / "sub" / "deeper"):
        with pytest.raises(NotADirectoryError) as e:
            make_dirs(path)
        assert str(tmp_path / "f") in e.value.filename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_failed_write_removes_temporary_and_new_parents_and_names_the_target(tmp_path):
    aborted_outputs(clear=True)
    target = tmp_path / "new" / "deeper" / "out.txt"
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a full disk: no path of its own
    assert e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
    assert aborted_outputs(clear=True) == [target]


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_paths_writes_all_or_none(tmp_path):
    a, b = tmp_path / "d" / "a.csv", tmp_path / "d" / "b.png"
    with pytest.raises(RuntimeError):
        with atomic_paths(a, b) as (ta, tb):
            assert ta.suffix == ".csv" and tb.suffix == ".png"  # formats are still told by suffix
            ta.write_text("a")
            raise RuntimeError
    assert not (tmp_path / "d").exists()
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("a")
        tb.write_bytes(b"b")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a.csv", "b.png"]


def test_text_and_bytes_writers(tmp_path):
    assert write_text_atomic(tmp_path / "x" / "t.txt", "hi").read_text() == "hi"
    assert write_bytes_atomic(tmp_path / "x" / "b.bin", b"\0\1").read_bytes() == b"\0\1"
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["b.bin", "t.txt"]
    with pytest.raises(NotADirectoryError):
        write_text_atomic(tmp_path / "x" / "t.txt" / "below", "no")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["b.bin", "t.txt"]
