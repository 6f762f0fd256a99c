"""`lsmerge evaluate --tasks` through lm-evaluation-harness on tiny models: a checkpoint, a
hidden-state mix at beta = 0 (the base's scores exactly), a user task folder, and the mixed
LM's log-likelihoods. Skipped, with the reason, when lm-eval (the `eval` extra) is missing."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'lsmerge[eval]'")

from lsmerge.cli import main  # noqa: E402
from lsmerge.io.tiny import TINY_WORDS  # noqa: E402


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    """A corpus `tiny` (validation split) of the tiny tokenizer's words: 8 items of 80 words fit in it."""
    root = tmp_path_factory.mktemp("harness_root")
    rng = random.Random(0)
    (root / "corpora" / "tiny").mkdir(parents=True)
    (root / "corpora" / "tiny" / "validation.txt").write_text(" ".join(rng.choice(TINY_WORDS) for _ in range(900)) + "\n")
    return root


def _run(argv, capsys):
    main(argv)
    return capsys.readouterr().out


def test_checkpoint_and_beta_zero_mix_score_alike(tiny_world, corpus_root, tmp_path, capsys):
    mix = json.dumps([{"base": str(tiny_world.base), "fine_tuned": [str(tiny_world.e1)], "operator": "lerp",
                       "mix_layer": 1, "beta": 0.0, "label": "mix0"}])  # fmt: skip
    out = tmp_path / "scores"
    printed = _run(["evaluate", "--models", f"[{tiny_world.base},{tiny_world.e1}]", "--mixes", mix,
                    "--tasks", "[continuation_tiny]", "--root", str(corpus_root), "--task_items", "8",
                    "--batch_size", "4", "--out", str(out)], capsys)  # fmt: skip
    rows = json.loads((out.with_suffix(".json")).read_text())["results"]
    assert (out.with_suffix(".csv")).read_text().splitlines()[0] == "model,task,metric,value,stderr,n_items,model_path"
    by = {(r["model"], r["metric"]): r for r in rows}
    assert {m for m, _ in by} == {"base", "e1", "mix0"} and {k for _, k in by} == {"acc", "acc_norm"}
    for metric in ("acc", "acc_norm"):
        base, mix0 = by[("base", metric)], by[("mix0", metric)]
        assert (mix0["value"], mix0["stderr"]) == (base["value"], base["stderr"])
        assert base["n_items"] == 8 and 0.0 <= base["value"] <= 1.0 and base["stderr"] > 0
        # each item's metric, in doc order: their mean is the value, and beta = 0 answers item by item as the base
        assert len(base["items"]) == 8 and set(base["items"]) <= {0.0, 1.0}
        assert sum(base["items"]) / 8 == pytest.approx(base["value"]) and mix0["items"] == base["items"]
    assert "continuation_tiny/acc" in printed and "mix0" in printed
    settings = json.loads((out.with_suffix(".json")).read_text())["settings"]
    assert settings["task_spec"]["items"] == 8 and settings["mixes"][0]["beta"] == 0.0


def _loglikelihoods(lm, requests):
    from lm_eval.api.instance import Instance

    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]


def test_mixed_lm_is_the_base_at_beta_zero_and_differs_at_beta_one(tiny_world):
    from lsmerge.evaluate.harness import make_lm
    from lsmerge.io.hf import load_causal_lm, load_tokenizer
    from lsmerge.merge.hidden.mixer import HiddenStateMixer, MixedForward, MixSpec

    requests = [("the cat sat on", " the mat"), ("a dog ran", " to the house and back")]
    base, e1 = load_causal_lm(tiny_world.base), load_causal_lm(tiny_world.e1)
    tok = load_tokenizer(tiny_world.base)
    plain = _loglikelihoods(make_lm(base, tok, batch_size=2), requests)
    scores = {}
    for beta in (0.0, 1.0):
        with HiddenStateMixer(base, MixSpec("lerp", 1, beta, "all")) as mixer:
            lm = make_lm(base, tok, batch_size=2, forward=MixedForward(base, [e1], mixer))
            scores[beta] = _loglikelihoods(lm, requests)
    assert scores[0.0] == plain
    assert all(a != b for a, b in zip(scores[1.0], plain))


def test_task_dir_task_runs(tiny_world, corpus_root, tmp_path, capsys):
    from lsmerge.evaluate.harness_tasks import ContinuationSpec, build_continuation_task

    built = build_continuation_task(corpus_root, "tiny", "validation", ContinuationSpec(items=4), tmp_path / "cache")
    mine = tmp_path / "mine"
    mine.mkdir()
    text = (built / "continuation_tiny.yaml").read_text().replace("task: continuation_tiny", "task: my_task")
    (mine / "my_task.yaml").write_text(text)
    printed = _run(["evaluate", "--models", f"[{tiny_world.base}]", "--tasks", "[my_task]", "--task_dir", str(mine),
                    "--root", str(tmp_path)], capsys)  # fmt: skip
    assert "my_task/acc" in printed
