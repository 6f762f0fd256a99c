"""Local lm-evaluation-harness tasks: "which continuation comes next" from a corpus split, and task folders.

A continuation task (`continuation_<corpus>`) is built from one split of a prepared corpus
(`<root>/corpora/<corpus>/<split>.txt`, held out from expert training) with no download:

- the split's words (maximal runs of non-space characters, `\\S+`) are cut into
  `n_slots = n_words // (context_words + continuation_words)` consecutive passages;
  `items` of them are taken evenly spaced, passage k = slot `floor(k * n_slots / items)`;
- an item's context is the passage's first `context_words` words and its true continuation the
  next `continuation_words` words, both as the original text between them (newlines and
  indentation kept);
- `choices - 1` distractors are `continuation_words`-word slices starting at random words of
  the same split (`random.Random(seed)`, drawn in item order) that do not overlap the item's
  passage and differ from the true continuation and from each other;
- the choices are shuffled by the same generator; `label` is the index of the true one.

One JSONL row per item: {"id", "offset" (character offset of the passage), "context",
"choices", "label"}. The task YAML beside it has lm-eval read the JSONL as a local `json`
dataset (`dataset_path: json`, `dataset_kwargs.data_files`) and score it as multiple choice:
log p(choice | context + " ") per choice, metrics acc and acc_norm (byte-length normalised).

Built tasks are cached under `<cache>/<task>-<key>/`, `key` a digest of the split file's bytes,
the split name and the builder's parameters: a changed corpus or setting builds a new folder.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from lsmerge.data.corpora import corpus_path
from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import atomic_paths

TASK_PREFIX = "continuation_"
BUILDER_VERSION = 1
_MAX_DRAWS = 1000  # random starts tried per distractor before giving up


@dataclass(frozen=True)
class ContinuationSpec:
    """How a continuation task is cut: `items` passages of `context_words + continuation_words`
    words, `choices` candidate continuations each (one true), distractors drawn with `seed`."""

    items: int = 100
    choices: int = 4
    context_words: int = 64
    continuation_words: int = 16
    seed: int = 0

    def check(self) -> None:
        if self.items < 1:
            raise LsMergeError(f"task_items={self.items} must be at least 1.")
        if self.choices < 2:
            raise LsMergeError(f"task_choices={self.choices} must be at least 2 (the true continuation and a distractor).")
        if self.context_words < 1 or self.continuation_words < 1:
            raise LsMergeError("context_words and continuation_words must be at least 1.")


def _slice(text: str, words: list[tuple[int, int]], first: int, count: int) -> str:
    return text[words[first][0] : words[first + count - 1][1]]


def continuation_items(text: str, spec: ContinuationSpec = ContinuationSpec(), what: str = "the text") -> list[dict]:
    """The rows of a continuation task cut from `text` (see the module doc); deterministic in
    (`text`, `spec`). Raises LsMergeError when `text` has too few words for `spec.items` passages."""
    spec.check()
    words = [m.span() for m in re.finditer(r"\S+", text)]
    span = spec.context_words + spec.continuation_words
    n_slots = len(words) // span
    if n_slots < spec.items:
        raise LsMergeError(
            f"{what} has {len(words)} words: {n_slots} passages of {span} words, fewer than task_items={spec.items}. "
            f"Ask for at most {n_slots} items, or use a larger split."
        )
    last_start = len(words) - spec.continuation_words  # a distractor starts at a word in 0..last_start
    rng = random.Random(spec.seed)
    rows = []
    for k in range(spec.items):
        start = (k * n_slots // spec.items) * span
        cut = start + spec.context_words
        true = _slice(text, words, cut, spec.continuation_words)
        choices = [true]
        for _ in range(_MAX_DRAWS * (spec.choices - 1)):
            if len(choices) == spec.choices:
                break
            j = rng.randint(0, last_start)
            if j + spec.continuation_words > start and j < start + span:  # overlaps the item's passage
                continue
            candidate = _slice(text, words, j, spec.continuation_words)
            if candidate not in choices:
                choices.append(candidate)
        if len(choices) < spec.choices:
            raise LsMergeError(
                f"{what} has too few distinct {spec.continuation_words}-word slices for {spec.choices} choices per "
                "item; lower task_choices or use a larger split."
            )
        rng.shuffle(choices)
        rows.append({"id": k, "offset": words[start][0], "context": text[words[start][0] : words[cut - 1][1]],
                     "choices": choices, "label": choices.index(true)})  # fmt: skip
    return rows


def task_yaml(name: str, data_file: Path) -> dict:
    """The lm-eval task config of a continuation task whose rows are in `data_file` (absolute path)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": float(BUILDER_VERSION)},
    }


def task_key(split_file: Path, split: str, spec: ContinuationSpec) -> str:
    """16 hex digits naming a built task: sha256 of the split file's bytes, the split and `spec`."""
    h = hashlib.sha256(split_file.read_bytes())
    h.update(json.dumps({"split": split, "spec": asdict(spec), "version": BUILDER_VERSION}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def local_corpora(root: str | Path, split: str) -> list[str]:
    """Names of the corpora under `<root>/corpora/` that have `<split>.txt` (sorted)."""
    base = Path(root) / "corpora"
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / f"{split}.txt").is_file())


def build_continuation_task(root: str | Path, corpus: str, split: str, spec: ContinuationSpec, cache: str | Path) -> Path:
    """The folder holding `continuation_<corpus>`'s YAML and JSONL (built once per key, then reused)."""
    split_file = corpus_path(root, corpus, split).resolve()
    name = TASK_PREFIX + corpus
    folder = Path(cache).expanduser().resolve() / f"{name}-{split}-{task_key(split_file, split, spec)}"
    yaml_path, data_path = folder / f"{name}.yaml", folder / f"{name}.jsonl"
    if yaml_path.is_file() and data_path.is_file():
        return folder
    rows = continuation_items(split_file.read_text(encoding="utf-8"), spec, what=f"corpus {corpus!r} ({split} split)")
    with atomic_paths(data_path, yaml_path) as (data_tmp, yaml_tmp):  # both files or neither
        data_tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        yaml_tmp.write_text(yaml.safe_dump(task_yaml(name, data_path), sort_keys=False), encoding="utf-8")
    return folder


# -- user task folders -------------------------------------------------------------------------


class _TolerantLoader(yaml.SafeLoader):
    """SafeLoader that reads lm-eval's `!function module.fn` tags (and any other tag) as None."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_task_configs(task_dir: str | Path) -> dict[str, tuple[Path, dict]]:
    """{task name: (yaml path, config)} for every `*.yaml` / `*.yml` under `task_dir` with a `task: NAME` key."""
    folder = Path(task_dir).expanduser()
    if not folder.is_dir():
        raise LsMergeError(f"task_dir {folder} is not a folder; give a folder of lm-eval task YAML files.")
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise LsMergeError(f"task file {path} is not valid YAML ({e}); fix it or move it out of {folder}.") from None
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            found[config["task"]] = (path, config)
    return found


def _data_files(config: dict) -> list[Path]:
    """The local files named by a `dataset_path: json` config's `dataset_kwargs.data_files`."""
    if config.get("dataset_path") != "json":
        return []
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    values = list(files.values()) if isinstance(files, dict) else [files]
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    return [Path(v).expanduser() for v in flat if isinstance(v, str)]


def _field(config: dict, key: str) -> str | None:
    value = config.get(key)
    return value if isinstance(value, str) and value.isidentifier() else None


def check_task_rows(name: str, yaml_path: Path, config: dict) -> None:
    """Check a local json task's rows before lm-eval reads them: every line a JSON object with the
    fields the config names (doc_to_text / doc_to_choice / doc_to_target as plain field names), the
    choices a list of >= 2 strings, the target an index into them. Raises LsMergeError naming the row."""
    text_f, choice_f, target_f = (_field(config, k) for k in ("doc_to_text", "doc_to_choice", "doc_to_target"))
    for path in _data_files(config):
        if not path.is_file():
            raise LsMergeError(f"task {name!r} ({yaml_path}) reads {path}, which does not exist; fix data_files.")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"task {name!r}: {path} row {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LsMergeError(f"{where} is not valid JSON ({e.msg}); fix or remove that line.") from None
                if not isinstance(row, dict):
                    raise LsMergeError(f"{where} is not a JSON object; each line must be one object.")
                missing = [f for f in (text_f, choice_f, target_f) if f is not None and f not in row]
                if missing:
                    raise LsMergeError(f"{where} has no field {missing[0]!r} (the task config reads it); add it to every row.")
                choices = row.get(choice_f) if choice_f else None
                if choice_f and (not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices)):
                    raise LsMergeError(f"{where}: {choice_f!r} must be a list of at least 2 strings.")
                target = row.get(target_f) if target_f else None
                index = isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices or [])
                if choice_f and target_f and not (index or target in choices):
                    raise LsMergeError(f"{where}: {target_f!r} = {target!r} is neither an index into its {len(choices)} "
                                       "choices nor one of them.")
