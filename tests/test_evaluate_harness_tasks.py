"""Local lm-eval tasks: the continuation builder, its cache, task-folder row checks, task names,
and the missing-extra error. None of these need lm-eval installed."""

from __future__ import annotations

import json
import random
import re
import sys

import pytest
import yaml

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.harness_tasks import (ContinuationSpec, build_continuation_task, check_task_rows, continuation_items,
                                            read_task_configs)  # fmt: skip

SPEC = ContinuationSpec(items=12, choices=4, context_words=10, continuation_words=5, seed=3)


def _text(n_words: int = 400, seed: int = 0) -> str:
    """Numbered words with newlines and indentation, so every slice is unique and whitespace is kept."""
    rng = random.Random(seed)
    return "".join(f"w{i}" + rng.choice([" ", " ", "\n", "\n    "]) for i in range(n_words))


def test_rows_are_well_formed_and_hold_the_true_continuation():
    text = _text()
    rows = continuation_items(text, SPEC)
    assert [r["id"] for r in rows] == list(range(12))
    words = re.findall(r"\S+", text)
    for r in rows:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert 0 <= r["label"] < 4
        assert text[r["offset"]:].startswith(r["context"]) and len(r["context"].split()) == 10
        after = text[r["offset"] + len(r["context"]):]
        gap = re.match(r"\s+", after).group()
        assert after[len(gap):].startswith(r["choices"][r["label"]])  # the true one follows the context
        first = words.index(r["context"].split()[0])
        passage = set(words[first:first + 15])
        for i, choice in enumerate(r["choices"]):
            assert len(choice.split()) == 5
            if i != r["label"]:
                assert not passage & set(choice.split())  # distractors come from elsewhere
    assert len({r["label"] for r in rows}) > 1  # the answer is not always in the same place
    assert rows[0]["offset"] == 0 and rows[-1]["offset"] > len(text) // 2  # passages spread over the split


def test_rows_are_deterministic_and_seeded():
    text = _text()
    assert continuation_items(text, SPEC) == continuation_items(text, SPEC)
    other = continuation_items(text, ContinuationSpec(**{**SPEC.__dict__, "seed": 4}))
    assert other != continuation_items(text, SPEC)
    assert [r["context"] for r in other] == [r["context"] for r in continuation_items(text, SPEC)]


def test_too_small_text_names_the_counts():
    with pytest.raises(LsMergeError, match=r"60 words: 4 passages of 15 words, fewer than task_items=12"):
        continuation_items(_text(60), SPEC)
    with pytest.raises(LsMergeError, match="task_choices"):
        continuation_items(_text(), ContinuationSpec(choices=1))


def _corpus(root, name="tiny", split="validation", text=None):
    d = root / "corpora" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{split}.txt").write_text(text if text is not None else _text())
    return d


def test_build_caches_by_content_and_writes_a_task_lm_eval_can_read(tmp_path):
    _corpus(tmp_path)
    folder = build_continuation_task(tmp_path, "tiny", "validation", SPEC, tmp_path / "cache")
    config = yaml.safe_load((folder / "continuation_tiny.yaml").read_text())
    assert config["task"] == "continuation_tiny" and config["dataset_path"] == "json"
    data = config["dataset_kwargs"]["data_files"]["test"]
    rows = [json.loads(line) for line in open(data)]
    assert rows == continuation_items(_text(), SPEC)
    check_task_rows("continuation_tiny", folder / "continuation_tiny.yaml", config)
    stamp = (folder / "continuation_tiny.jsonl").stat().st_mtime_ns
    assert build_continuation_task(tmp_path, "tiny", "validation", SPEC, tmp_path / "cache") == folder
    assert (folder / "continuation_tiny.jsonl").stat().st_mtime_ns == stamp  # reused, not rebuilt
    _corpus(tmp_path, text=_text(seed=1))
    assert build_continuation_task(tmp_path, "tiny", "validation", SPEC, tmp_path / "cache") != folder  # new corpus, new key


def _task_dir(tmp_path, lines: list[str]):
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "rows.jsonl").write_text("".join(line + "\n" for line in lines))
    config = {"task": "mine", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(d / "rows.jsonl")}},
              "output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "label"}
    (d / "mine.yaml").write_text(yaml.safe_dump(config) + "process_results: !function utils.process\n")
    return d


GOOD = json.dumps({"context": "a", "choices": ["b", "c"], "label": 1})


@pytest.mark.parametrize("bad, fragment", [
    ("{not json", "row 2 is not valid JSON"),
    ("[1, 2]", "row 2 is not a JSON object"),
    (json.dumps({"context": "a", "choices": ["b", "c"]}), "row 2 has no field 'label'"),
    (json.dumps({"context": "a", "choices": ["b"], "label": 0}), "row 2: 'choices' must be a list of at least 2"),
    (json.dumps({"context": "a", "choices": ["b", "c"], "label": 2}), "row 2: 'label' = 2 is neither an index"),
])
def test_malformed_rows_are_named(tmp_path, bad, fragment):
    d = _task_dir(tmp_path, [GOOD, bad, GOOD])
    (name, (path, config)), = read_task_configs(d).items()
    assert name == "mine"
    with pytest.raises(LsMergeError, match=re.escape(fragment)):
        check_task_rows(name, path, config)


def test_good_rows_pass(tmp_path):
    d = _task_dir(tmp_path, [GOOD, "", json.dumps({"context": "x", "choices": ["y", "z"], "label": "z"})])
    (name, (path, config)), = read_task_configs(d).items()
    check_task_rows(name, path, config)


def test_unknown_task_lists_the_available_ones(tmp_path, monkeypatch):
    from lsmerge.evaluate.harness_command import resolve_task_names

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: no lm-eval task index
    _corpus(tmp_path, "tiny")
    _corpus(tmp_path, "other", split="test")  # no validation split: not offered
    d = _task_dir(tmp_path, [GOOD])
    with pytest.raises(LsMergeError, match=r"unknown task 'bogus'\. Available here: continuation_tiny, mine .*lsmerge\[eval\]"):
        resolve_task_names(["continuation_tiny", "bogus"], str(tmp_path), "validation", str(d))
    assert resolve_task_names(["mine", "continuation_tiny"], str(tmp_path), "validation", str(d))[0] == ["tiny"]


def test_missing_lm_eval_says_how_to_install_and_builds_nothing(tiny_world, tmp_path, monkeypatch, capsys):
    from lsmerge.cli import main

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    _corpus(tmp_path, "tiny")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--models", f"[{tiny_world.base}]", "--tasks", "[continuation_tiny]", "--root", str(tmp_path),
              "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "pip install 'lsmerge[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob("out*"))
