"""`lsmerge evaluate` (`lsmerge.evaluate.perplexity_command`): the command end to end on tiny
Llamas, output paths, typed choices, and every bad input refused before anything is written."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from lsmerge.data.corpora import corpus_path
from lsmerge.errors import LsMergeError
from lsmerge.evaluate.perplexity import perplexity_of_ids
from lsmerge.evaluate.perplexity_command import evaluate, output_paths
from conftest import make_tiny_llama
from tests.evaluate_helpers import sample_text


@pytest.fixture(scope="module")
def tiny_models(tiny_world, tmp_path_factory):
    """Two tiny Llamas (different seeds) saved with the same tokenizer, in folders whose names
    (the models' names in the results) appear nowhere else in the output."""
    root = tmp_path_factory.mktemp("models")
    for src, name in ((tiny_world.base, "llama-a"), (tiny_world.e1, "llama-b")):
        shutil.copytree(src, root / name)
    return [root / "llama-a", root / "llama-b"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text(sample_text(150, seed=3))
    return path


def test_evaluate_end_to_end(tiny_models, text_file, tmp_path, capsys):
    root = tmp_path / "ckpt"
    corpus = corpus_path(root, "shakespeare", "validation")
    corpus.parent.mkdir(parents=True)
    corpus.write_text(sample_text(120, seed=4))
    out = tmp_path / "results" / "ppl"
    results = evaluate(
        models=[str(p) for p in tiny_models],
        texts=[str(text_file)],
        corpora=["shakespeare"],
        root=str(root),
        max_length=16,
        stride=8,
        batch_size=3,
        out=str(out),
    )
    assert [(r.model, r.text) for r in results] == [
        ("llama-a", "sample.txt"),
        ("llama-a", "shakespeare/validation"),
        ("llama-b", "sample.txt"),
        ("llama-b", "shakespeare/validation"),
    ]
    printed = capsys.readouterr().out
    assert "llama-a" in printed and "shakespeare/validation" in printed

    # the same numbers as scoring the tokenized text directly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[1])
    ids = torch.tensor(tok(text_file.read_text())["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[1]).eval()
    ppl, _, count, _ = perplexity_of_ids(model, ids, max_length=16, stride=8)
    assert results[2].perplexity == pytest.approx(ppl, rel=1e-6)
    assert results[2].tokens_scored == count == ids.numel() - 1
    assert results[0].perplexity != pytest.approx(results[2].perplexity)  # two different models

    data = json.loads(out.with_name("ppl.json").read_text())
    assert data["settings"]["stride"] == 8 and len(data["results"]) == 4
    assert data["results"][3]["perplexity"] == pytest.approx(results[3].perplexity)
    rows = list(csv.DictReader(out.with_name("ppl.csv").open()))
    assert [r["model"] for r in rows] == ["llama-a", "llama-a", "llama-b", "llama-b"]
    assert float(rows[1]["perplexity"]) == pytest.approx(results[1].perplexity)


def test_max_tokens_caps_scored_tokens(tiny_models, text_file):
    (result,) = evaluate(models=[str(tiny_models[0])], texts=[str(text_file)], max_length=16, stride=8, max_tokens=25)
    assert result.tokens_scored == 25


def test_cli_writes_into_a_folder(tiny_models, text_file, tmp_path, capsys):
    from lsmerge.cli import main

    out = tmp_path / "res"
    out.mkdir()
    main(
        [
            "evaluate",
            "--models", json.dumps([str(tiny_models[0])]),
            "--texts", json.dumps([str(text_file)]),
            "--max_length", "32",
            "--stride", "16",
            "--max_tokens", "40",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert "llama-a" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "perplexity.csv").open()))
    assert len(rows) == 1 and int(rows[0]["tokens_scored"]) == 40
    assert json.loads((out / "perplexity.json").read_text())["results"][0]["tokens_scored"] == 40


def test_output_paths(tmp_path):
    assert output_paths(tmp_path) == (tmp_path / "perplexity.json", tmp_path / "perplexity.csv")
    assert output_paths(str(tmp_path / "new") + "/") == (tmp_path / "new/perplexity.json", tmp_path / "new/perplexity.csv")
    assert output_paths(tmp_path / "a.json") == (tmp_path / "a.json", tmp_path / "a.csv")
    assert output_paths(tmp_path / "run.1") == (tmp_path / "run.1.json", tmp_path / "run.1.csv")


# -- bad input: one clear error, nothing written ----------------------------------------------


def _bad_cases(tiny_models, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    no_tok = tmp_path / "no-tokenizer"
    make_tiny_llama(no_tok)
    model, text = str(tiny_models[0]), str(text_file)
    return [
        (dict(models=[str(tmp_path / "missing")], texts=[text]), "unknown model .*no such folder"),
        (dict(models=[model], texts=[str(tmp_path / "nope.txt")]), "does not exist"),
        (dict(models=[model], texts=[str(empty)]), "empty"),
        (dict(models=[model], corpora=["python"], root=str(tmp_path / "r")), "lsmerge fetch"),
        (dict(models=[model], texts=[text], max_length=8, stride=9), "stride"),
        (dict(models=[model], texts=[text], stride=0), "stride"),
        (dict(models=[model]), "nothing to evaluate"),
        (dict(models=[str(no_tok)], texts=[text]), "tokenizer"),
        (dict(models=[model], texts=[text], dtype="float8"), "dtype"),
        (dict(models=[model], texts=[text], max_tokens=0), "max_tokens"),
        (dict(models=[model], corpora=["python"], split="dev"), "unknown split 'dev'"),
    ]


def test_bad_input_raises_before_writing(tiny_models, text_file, tmp_path):
    out = tmp_path / "out" / "ppl"
    for kwargs, match in _bad_cases(tiny_models, text_file, tmp_path):
        with pytest.raises(LsMergeError, match=match):
            evaluate(out=str(out), **kwargs)
    assert not out.parent.exists()


def test_cli_reports_error(tiny_models, tmp_path, capsys):
    from lsmerge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--models", json.dumps([str(tiny_models[0])]), "--texts", json.dumps([str(tmp_path / "x.txt")])])
    assert e.value.code == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_typed_choices(tiny_models, text_file, capsys):
    """dtype and split are typed choices: --help lists them and the parser refuses others (exit 2)."""
    from typing import get_args

    from lsmerge.cli import main
    from lsmerge.torch_options import DTYPES, DtypeName

    assert set(get_args(DtypeName)) == set(DTYPES)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "--split {train,validation,test}" in printed and "{float32,fp32,bfloat16,bf16,float16,fp16,float64}" in printed
    base = ["evaluate", "--models", json.dumps([str(tiny_models[0])]), "--texts", json.dumps([str(text_file)])]
    for args in (["--dtype", "float8"], ["--split", "dev"]):
        with pytest.raises(SystemExit) as e:
            main([*base, *args])
        assert e.value.code == 2 and f"Got value: {args[1]}" in capsys.readouterr().err


def test_results_are_written_both_or_neither(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from lsmerge.evaluate.perplexity import PerplexityResult
    from lsmerge.evaluate.perplexity_command import write_results

    real = Path.write_text

    def full_disk_on_csv(self, *a, **k):
        if self.suffix == ".csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk_on_csv)
    row = PerplexityResult(**{f: (1.0 if t in ("float", float) else 1 if t in ("int", int) else "x")
                              for f, t in PerplexityResult.__annotations__.items()})
    with pytest.raises(OSError):
        write_results([row], {}, tmp_path / "out" / "ppl")
    assert not (tmp_path / "out").exists()  # no json without its csv, no folder made for them


def test_models_are_taken_by_name_as_merge_takes_them(tiny_models, text_file, tmp_path, monkeypatch):
    """A name under checkpoints/base/ resolves through io.hf.resolve_model, as in merge / merge-weights."""
    (tmp_path / "checkpoints" / "base").mkdir(parents=True)
    shutil.copytree(tiny_models[0], tmp_path / "checkpoints" / "base" / "llama-a")
    monkeypatch.chdir(tmp_path)
    by_name = evaluate(models=["llama-a"], texts=[str(text_file)], max_tokens=40)
    by_path = evaluate(models=[str(tiny_models[0])], texts=[str(text_file)], max_tokens=40)
    assert by_name[0].perplexity == by_path[0].perplexity


def test_reference_gives_paired_intervals_and_window_scores(tiny_models, text_file, tmp_path, capsys):
    copy = tmp_path / "llama-a-copy"
    shutil.copytree(tiny_models[0], copy)
    out = tmp_path / "cmp"
    results = evaluate(models=[str(tiny_models[1]), str(copy)], texts=[str(text_file)], reference=str(tiny_models[0]),
                       max_length=16, stride=16, resamples=300, out=str(out), progress=False)  # fmt: skip
    assert [r.model for r in results] == ["llama-b", "llama-a-copy", "llama-a"]  # the reference is added
    data = json.loads(out.with_name("cmp.json").read_text())
    windows = {w["model"]: w for w in data["windows"]}
    assert sum(windows["llama-b"]["tokens"]) == results[0].tokens_scored and len(windows["llama-b"]["nll_sum"]) == results[0].windows
    assert sum(windows["llama-b"]["nll_sum"]) / results[0].tokens_scored == pytest.approx(results[0].mean_nll)
    iv = {i["model"]: i for i in data["intervals"]}
    assert set(iv) == {"llama-b", "llama-a-copy"} and data["settings"]["reference"] == "llama-a"
    # the same weights: a zero-width interval at ratio 1, level; another model: the ratio of the perplexities
    assert (iv["llama-a-copy"]["ratio_low"], iv["llama-a-copy"]["ratio_high"], iv["llama-a-copy"]["verdict"]) == (1.0, 1.0, "level")
    assert iv["llama-b"]["ratio"] == pytest.approx(results[0].perplexity / results[2].perplexity)
    assert iv["llama-b"]["ratio_low"] <= iv["llama-b"]["ratio"] <= iv["llama-b"]["ratio_high"]
    assert iv["llama-b"]["ratio_low"] < iv["llama-b"]["ratio_high"]
    expected = "better" if iv["llama-b"]["ratio_high"] < 1 else "worse" if iv["llama-b"]["ratio_low"] > 1 else "level"
    assert iv["llama-b"]["verdict"] == expected
    printed = capsys.readouterr().out
    assert "against llama-a" in printed and "llama-a-copy on sample.txt  1.0000 [1.0000, 1.0000]  level" in printed
    rows = list(csv.DictReader(out.with_name("cmp.csv").open()))
    assert [r["verdict"] for r in rows] == [iv["llama-b"]["verdict"], "level", ""]


def test_min_tokens_and_a_foreign_reference_are_refused_before_any_model_loads(tiny_models, text_file, tmp_path, monkeypatch):
    import lsmerge.evaluate.perplexity_command as command

    monkeypatch.setattr(command, "load_causal_lm", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(LsMergeError, match=r"gives \d+ token\(s\) to score .* 5000 are needed \(--min_tokens\)"):
        evaluate(models=[str(tiny_models[0])], texts=[str(text_file)], min_tokens=5000, out=str(tmp_path / "o"))
    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_models[1], foreign)
    cfg = json.loads((foreign / "tokenizer_config.json").read_text())
    (foreign / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 77}))
    with pytest.raises(LsMergeError, match="has another tokenizer than the reference"):
        evaluate(models=[str(foreign)], texts=[str(text_file)], reference=str(tiny_models[0]), out=str(tmp_path / "o"))
    with pytest.raises(LsMergeError, match="resamples=0"):
        evaluate(models=[str(foreign)], texts=[str(text_file)], reference=str(tiny_models[0]), resamples=0)
    assert not list(tmp_path.glob("o*"))
