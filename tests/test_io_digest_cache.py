"""`lsmerge.io.digest_cache`: a file's sha256 is remembered by its stat identity and used only
while that identity is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from lsmerge.io import digest_cache
from lsmerge.io.digest_cache import cached_file_sha256, hash_file
from lsmerge.io.provenance import input_digests


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LSMERGE_CACHE_DIR", str(d))
    monkeypatch.delenv("LSMERGE_DIGEST_CACHE", raising=False)
    return d


def _old_file(path, data: bytes):
    """A file whose mtime is well in the past (not 'racily clean')."""
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def _poison(cache, fake="f" * 64):
    """Replace every remembered digest with `fake`: a later answer of `fake` proves a cache hit."""
    entries = list((cache / "digests").glob("*.json"))
    for e in entries:
        data = json.loads(e.read_text())
        e.write_text(json.dumps({**data, "sha256": fake}))
    return entries


def test_hash_file_equals_hashlib_across_buffer_boundaries(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)
    p = tmp_path / "w.bin"
    p.write_bytes(data)
    assert hash_file(p) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert hash_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_unchanged_file_is_answered_from_the_cache(cache, tmp_path):
    p = _old_file(tmp_path / "w.bin", b"weights" * 100)
    assert cached_file_sha256(p) == hashlib.sha256(b"weights" * 100).hexdigest()
    assert len(_poison(cache)) == 1
    assert cached_file_sha256(p) == "f" * 64


def test_rewritten_file_is_hashed_again_even_with_its_old_size_and_mtime(cache, tmp_path):
    p = _old_file(tmp_path / "w.bin", b"a" * 1000)
    cached_file_sha256(p)
    _poison(cache)
    st = p.stat()
    p.write_bytes(b"b" * 1000)  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: ctime still moved
    assert cached_file_sha256(p) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_replaced_file_is_hashed_again(cache, tmp_path):
    p = _old_file(tmp_path / "w.bin", b"a" * 1000)
    cached_file_sha256(p)
    _poison(cache)
    q = _old_file(tmp_path / "new.bin", b"c" * 1000)
    os.replace(q, p)  # a new inode at the same path
    assert cached_file_sha256(p) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_recently_modified_file_is_not_remembered(cache, tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"fresh")
    assert cached_file_sha256(p) == hashlib.sha256(b"fresh").hexdigest()
    assert not list((cache / "digests").glob("*.json")) if (cache / "digests").exists() else True


def test_cache_off_and_unwritable_cache_still_give_the_digest(cache, tmp_path, monkeypatch):
    p = _old_file(tmp_path / "w.bin", b"x" * 10)
    cached_file_sha256(p)
    _poison(cache)
    monkeypatch.setenv("LSMERGE_DIGEST_CACHE", "0")
    assert cached_file_sha256(p) == hashlib.sha256(b"x" * 10).hexdigest()
    monkeypatch.delenv("LSMERGE_DIGEST_CACHE")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("LSMERGE_CACHE_DIR", str(blocker))
    assert cached_file_sha256(p) == hashlib.sha256(b"x" * 10).hexdigest()


def test_corrupt_entry_is_ignored_and_replaced(cache, tmp_path):
    p = _old_file(tmp_path / "w.bin", b"y" * 10)
    cached_file_sha256(p)
    (entry,) = (cache / "digests").glob("*.json")
    entry.write_text("{not json")
    assert cached_file_sha256(p) == hashlib.sha256(b"y" * 10).hexdigest()
    assert json.loads(entry.read_text())["sha256"] == hashlib.sha256(b"y" * 10).hexdigest()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("LSMERGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digest_cache.cache_dir() == tmp_path / "xdg" / "lsmerge"
    monkeypatch.setenv("LSMERGE_CACHE_DIR", str(tmp_path / "own"))
    assert digest_cache.cache_dir() == tmp_path / "own"


def test_input_digests_use_the_cache(cache, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    _old_file(ck / "model.safetensors", b"tensor bytes")
    _old_file(ck / "config.json", b"{}")
    first = input_digests([ck])
    assert {f["file"]: f["sha256"] for f in first[0]["files"]}["config.json"] == hashlib.sha256(b"{}").hexdigest()
    _poison(cache)
    assert {f["sha256"] for f in input_digests([ck])[0]["files"]} == {"f" * 64}


@pytest.mark.parametrize("cache_on", [True, False])
def test_a_prefetched_digest_is_used_only_while_the_file_is_unchanged(cache, tmp_path, monkeypatch, cache_on):
    if not cache_on:
        monkeypatch.setenv("LSMERGE_DIGEST_CACHE", "0")
    monkeypatch.setattr(digest_cache, "_prefetched", {})
    f = _old_file(tmp_path / "w.safetensors", b"a" * 5000)
    digest_cache.prefetch([f, tmp_path / "missing.safetensors"])
    digest_cache._prefetched[str(f)].result(timeout=30)
    calls = []
    monkeypatch.setattr(digest_cache, "hash_file", lambda p: calls.append(p) or hash_file(p))
    assert cached_file_sha256(f) == hashlib.sha256(b"a" * 5000).hexdigest()
    assert calls == []  # taken from the prefetch
    f.write_bytes(b"b" * 5000)  # changed after it was prefetched: hashed again
    assert cached_file_sha256(f) == hashlib.sha256(b"b" * 5000).hexdigest()
    assert len(calls) == 1


def test_a_racily_clean_file_is_not_taken_from_the_prefetch(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(digest_cache, "_prefetched", {})
    f = tmp_path / "fresh.safetensors"
    f.write_bytes(b"c" * 100)  # modified just now: a write in the same tick would not show in its stat
    digest_cache.prefetch([f])
    digest_cache._prefetched[str(f)].result(timeout=30)
    calls = []
    monkeypatch.setattr(digest_cache, "hash_file", lambda p: calls.append(p) or hash_file(p))
    assert cached_file_sha256(f) == hashlib.sha256(b"c" * 100).hexdigest()
    assert len(calls) == 1


def test_the_command_line_prefetches_the_inputs_it_names(tmp_path, monkeypatch):
    from lsmerge import cli

    started = []
    monkeypatch.setattr(digest_cache, "prefetch", lambda paths: started.extend(os.path.basename(os.path.dirname(p)) for p in paths))
    for name in ("a", "b", "base", "r1", "r2", "out"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"models:\n  - model: {tmp_path / 'r1'}\n    parameters: {{weight: 1}}\nbase_model: {tmp_path / 'r2'}\n")
    cli._prefetch_input_digests(["--models", f'["{tmp_path / "a"}", "{tmp_path / "b"}"]', f"--base={tmp_path / 'base'}",
                                 "--mergekit_config", str(recipe), "--out", str(tmp_path / "out"), "--method", "linear"])
    assert sorted(started) == ["a", "b", "base", "r1", "r2"]  # not "out"
