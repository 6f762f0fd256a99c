"""`scripts/reproduce.py`'s pipeline end to end on tiny models: a base, two experts and a
Gemma-3 target built here, a tiny VAE fit, every kind of row, the sweep, the kurtosis figure,
the judge, then RESULTS.md; a second run reuses every cached step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_causal_lm, word_tokenizer
from lsmerge.errors import LsMergeError
from lsmerge.results.pipeline import Runner
from lsmerge.results.plan import load_plan
from lsmerge.results.vae_runs import derive_fit_config, latent_dim_for

WORDS = "the of and to in is was for on with as by at from his her they we you it not but be this which A B tie".split()


def _text(n: int, seed: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (n,), generator=g).tolist()) + "\n"


def _save(model, tok, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny base, two 'experts' (the base plus small task vectors), a tiny Gemma-3, corpora."""
    root = tmp_path_factory.mktemp("world")
    tok = word_tokenizer([" ".join(WORDS)], unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="<s>")
    # Llama's own init and config; the experts and the Gemma draw on from seed 0's RNG (seed None)
    cfg = dict(layers=2, vocab=64, initializer_range=0.02, max_position_embeddings=2048, pad_token_id=1, bos_token_id=2,
               eos_token_id=2)  # fmt: skip
    base = tiny_causal_lm(0, **cfg)
    paths = {"base": _save(base, tok, root / "base")}
    for i in (1, 2):
        g = torch.Generator().manual_seed(10 + i)
        expert = tiny_causal_lm(None, **cfg)
        expert.load_state_dict({k: v + 0.02 * v.std().nan_to_num() * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()})
        paths[f"expert{i}"] = _save(expert, tok, root / f"expert{i}")
    gemma = tiny_causal_lm(None, layers=2, hidden=48, vocab=64, family="gemma3", pad_token_id=1)
    paths["gemma"] = _save(gemma, tok, root / "gemma")
    for j, corpus in enumerate(("shakespeare", "python")):
        d = root / "corpora" / corpus
        d.mkdir(parents=True)
        for k, split in enumerate(("train", "validation", "test")):
            (d / f"{split}.txt").write_text(_text(300, seed=10 * j + k))
    (root / "prompts.txt").write_text("the of and\nwe they you\n")
    vae = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "val_check_interval": 5, "check_val_every_n_epoch": None,
                    "log_every_n_steps": 5, "enable_progress_bar": False},
        "data": {"checkpoints": [paths["base"]], "kinds": ["mlp"], "chunk_size": 32, "layout": "flat", "tokens_per_sample": 8,
                 "normalization": "zscore", "val_fraction": 0.0, "batch_size": 8},
        "model": {"latent_dim": 32, "d_model": 32, "n_heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ae_steps": 10,
                  "beta_max": 1.0e-4, "beta_warmup_steps": 5, "lr": 2.0e-3, "lr_warmup_steps": 2},
    }  # fmt: skip
    (root / "vae.yaml").write_text(yaml.safe_dump(vae))
    return root, paths


def _plan(root: Path, paths: dict) -> dict:
    pca = {"codec": "pca", "chunk_size": 32, "rank": 16}
    two = ["{expert1}", "{expert2}"]
    rows = [
        {"group": "recon", "name": "base", "model": "{base}"},
        {"group": "recon", "name": "VAE ratio 2", "command": "export", "args": {"vae": "{vae:r2}", "model": "{base}"}},
        {"group": "recon", "name": "iid noise 5 %", "command": "perturb", "control": "reference",
         "args": {"model": "{base}", "perturbation": "iid", "level": 0.05}},
        {"group": "recon", "name": "PCA full rank", "command": "merge", "config": "configs/merge/self_merge.yaml",
         "args": {"models": ["{base}"], "temperature": 0.0, "delta": "none", **pca, "rank": 32}},
        {"group": "self", "name": "LS-Merge self-merge", "command": "merge", "config": "configs/merge/self_merge.yaml",
         "args": {"models": ["{base}"], **pca}},
        {"group": "experts", "name": "expert 1", "model": "{expert1}", "control": "input"},
        {"group": "experts", "name": "expert 2", "model": "{expert2}", "control": "input"},
        {"group": "experts", "name": "TIES", "command": "merge-weights", "config": "configs/merge_weights/ties.yaml",
         "args": {"base_model": "{base}", "models": two, "parameters": {"weight": [1.0, 1.0], "density": 0.5}}},
        {"group": "experts", "name": "DARE-TIES", "command": "merge-weights", "config": "configs/merge_weights/dare_ties.yaml",
         "args": {"base_model": "{base}", "models": two, "parameters": {"weight": [1.0, 1.0], "density": 0.5}}},
        {"group": "experts", "name": "RegMean", "command": "merge-weights", "config": "configs/merge_weights/regmean.yaml",
         "args": {"models": two, "calibration": {"files": [str(root / "corpora/shakespeare/train.txt")], "max_tokens": 64, "seq_len": 16}}},
        {"group": "experts", "name": "hidden SLERP", "hidden": {"base": "{expert1}", "source": "{expert2}", "operator": "slerp", "mix_layer": 1, "beta": 0.5}},
        {"group": "experts", "name": "LS-Merge soup (VAE)", "command": "merge", "config": "configs/merge/soup_n.yaml",
         "args": {"models": two, "weights": [0.5, 0.5], "codec": "{vae:r2}", "kinds": ["mlp"], "delta": "latent", "base": "{base}"}},
        {"group": "experts", "name": "SLERP", "command": "merge-weights", "config": "configs/merge_weights/slerp.yaml",
         "args": {"models": two, "parameters": {"t": 0.5}, "per_kind": {}}},
        {"group": "experts", "name": "task arithmetic", "command": "merge-weights", "config": "configs/merge_weights/task_arithmetic.yaml",
         "args": {"base_model": "{base}", "models": two, "parameters": {"weight": [1.0, 1.0], "lambda": 1.0}}},
        {"group": "experts", "name": "DARE-linear", "command": "merge-weights", "config": "configs/merge_weights/dare_linear.yaml",
         "args": {"base_model": "{base}", "models": two, "parameters": {"weight": [1.0, 1.0], "density": 0.5}}},
        {"group": "experts", "name": "hidden LERP", "hidden": {"base": "{expert1}", "source": "{expert2}", "operator": "lerp", "mix_layer": 2, "beta": 0.5}},
        {"group": "experts", "name": "LS-Merge LERP (VAE, latent delta)", "command": "merge", "config": "configs/merge/lerp_two.yaml",
         "args": {"models": two, "codec": "{vae:r2}", "base": "{base}", "delta": "latent"}},
        {"group": "experts", "name": "LS-Merge task arithmetic (VAE)", "command": "merge", "config": "configs/merge/task_arithmetic.yaml",
         "args": {"base": "{base}", "models": two, "weights": [1.0, 1.0], "codec": "{vae:r2}"}},
        {"group": "experts", "name": "LS-Merge delta coding (PCA)", "command": "merge", "config": "configs/merge/delta_coding.yaml",
         "args": {"base": "{base}", "models": two, "chunk_size": 32, "rank": 16}},
        {"group": "layers", "name": "linear, MLP only", "command": "merge-weights", "config": "configs/merge_weights/linear.yaml",
         "args": {"models": two, "parameters": {"weight": [0.5, 0.5]}, "kinds": ["mlp"]}},
        {"group": "hetero", "name": "Gemma-3 target", "model": "{gemma}"},
        {"group": "hetero", "name": "OT + interpolation 0.1", "command": "merge", "config": "configs/merge/smollm2_to_gemma3_hetero.yaml",
         "args": {"models": ["{gemma}", "{base}"], "lam": 0.1, "delta": "latent", **pca}},
    ]
    rows += [{"group": "experts", "name": f"linear {x}", "command": "merge-weights", "config": "configs/merge_weights/linear.yaml",
              "args": {"models": two, "parameters": {"weight": [1 - x, x]}}, "curve": "weight linear", "x": x} for x in (0.0, 0.5, 1.0)]
    return {
        "title": "Tiny results", "out_dir": str(root / "out"), "results": str(root / "RESULTS.md"), "plots_dir": str(root / "plots"),
        "seed": 0, "models": paths,
        "prepare": [{"argv": ["python", "-c", f"open({str(root / 'prepared')!r}, 'w').write('ok')"], "creates": str(root / "prepared")}],
        "vae_runs": [{"name": "r2", "base_config": str(root / "vae.yaml"), "ratio": 2, "minutes": 0.1, "steps_per_minute": 150}],
        "eval": {"corpora": ["shakespeare", "python"], "split": "test", "root": str(root), "max_tokens": 64, "max_length": 16, "stride": 8},
        "bootstrap": {"resamples": 200},
        "domain_experts": {"shakespeare": "expert 1", "python": "expert 2"},
        "references": {"experts": "best-weight-space"},
        "weight_error": {"recon": {"kinds": ["mlp"]}},
        "groups": {"recon": "1. Reconstruction", "self": "2. Self-merge", "experts": "3. Experts", "hetero": "4. Heterogeneous", "layers": "5. Layers"},
        "rows": rows,
        "sweep": {"base": "{base}", "fine_tuned": ["{expert1}"], "text": str(root / "corpora/shakespeare/test.txt"),
                  "layers": [1, 2], "ratios": [0.5], "seq_len": 16, "max_chunks": 2},
        "inspect": ["{base}"],
        "judge": {"model": "{base}", "prompts": str(root / "prompts.txt"), "max_new_tokens": 4, "pairs": [["TIES", "hidden SLERP"]],
                  "generate_args": {"chat_template": False}, "judge_args": {"chat_template": False}},
    }  # fmt: skip


def test_pipeline_end_to_end_and_cached(world, tmp_path):
    root, paths = world
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(_plan(root, paths), sort_keys=False))
    (root / "plots").mkdir(exist_ok=True)
    (root / "plots" / "kurtosis_base.png").write_bytes(b"a stale plot, e.g. one committed with the repository")
    summary = Runner(load_plan(plan_path), say=lambda s: None).run()
    text = Path(summary["results"]).read_text()
    for title in ("1. Reconstruction", "2. Self-merge", "3. Experts", "4. Heterogeneous", "5. Layers", "Pairwise judge", "What the numbers show"):
        assert f"## {title}" in text
    assert "configs/merge_weights/ties.yaml" in text and "{vae:r2}" in text
    # the experts section: a summary column, sorted by it, every other row's interval against its reference
    experts = text[text.index("## 3. Experts"):text.index("## 4. Heterogeneous")]
    rows = [line for line in experts.splitlines() if line.startswith("| ") and not line.startswith(("| row |", "| ---"))]
    summaries = [float(line.split(" | ")[3].split(" [")[0]) for line in rows]
    assert "summary [95 %]" in experts and summaries == sorted(summaries)
    assert len(rows) == sum(r["group"] == "experts" for r in _plan(root, paths)["rows"])
    assert sum("(reference)" in line for line in rows) == 1 and all("%" in line.split(" | ")[1] for line in rows if "(reference)" not in line)
    assert "*(control: input as it is)*" in experts
    assert "## 1. Reconstruction" in text and "summary [95 %]" not in text[:text.index("## 3. Experts")]  # no experts there
    assert {Path(p).name for p in summary["plots"]} == {"interpolation_curves.png", "sweep_heatmap.png", "kurtosis_base.png"}
    assert all(Path(p).stat().st_size > 1000 for p in summary["plots"])
    scores = {p.stem: json.loads(p.read_text()) for p in (root / "out/scores").glob("*.json")}
    ppl = lambda slug, c: scores[slug]["corpora"][c]["perplexity"]  # noqa: E731
    for c in ("shakespeare", "python"):
        # a weight LERP at x = 0 is expert 1 itself; a full-rank PCA reconstruction is the base
        assert ppl("experts-linear-0.0", c) == pytest.approx(ppl("experts-expert-1", c), rel=1e-5)
        assert ppl("recon-pca-full-rank", c) == pytest.approx(ppl("recon-base", c), rel=1e-3)
        assert all(v["corpora"][c]["perplexity"] > 1 for v in scores.values())
    # the reconstruction section states each row's relative MLP weight error against the base
    recon = text[text.index("## 1. Reconstruction"):text.index("## 2. Self-merge")]
    assert "| row | weight error (mlp) | shakespeare |" in recon
    cells = {line.split(" | ")[0].lstrip("| ").split(" *(")[0].replace(" (reference)", "").strip("*"): line.split(" | ")[1]
             for line in recon.splitlines() if line.startswith("| ") and not line.startswith(("| row |", "| ---"))}
    assert cells["base"] == "0 %" and cells["iid noise 5 %"] == "5 %", cells
    assert float(cells["VAE ratio 2"].split(" %")[0]) > 0
    assert "control: known perturbation, the noise reference" in recon
    # the VAE fit ran from the derived config, and its checkpoint was used
    assert (root / "out/vae/r2/done.json").is_file() and (root / "out/models/recon-vae-ratio-2/config.json").is_file()
    # every step's wall time is recorded and summed: prepare, fit, builds, scores, sweep, inspect, generations, judge
    cost = text[text.index("## What the run costs"):]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in cost.splitlines()
             if line.startswith("| ") and not line.startswith(("| steps", "| ---"))]
    kinds = {c[0]: c[1:4] for c in cells}
    n_rows = len(_plan(root, paths)["rows"])
    n_commands = sum("command" in r for r in _plan(root, paths)["rows"])
    assert kinds["prepare (fetch, experts, statistics)"] == ["1", kinds["prepare (fetch, experts, statistics)"][1], ""]
    assert kinds["VAE fits"][0] == "1" and kinds["row builds"][0] == str(n_commands) and kinds["row scoring"][0] == str(n_rows)
    assert kinds["sweep, inspect, judge, harness"][0] == "5"  # sweep, inspect, two generations, one judge
    assert all(v[2] == "" for v in kinds.values()), kinds  # nothing without a record
    assert "Steps without a recorded time" not in cost
    # second run: nothing is trained, built, scored, generated or judged again
    said = []
    Runner(load_plan(plan_path), say=said.append).run()
    work = [s for s in said if not s.startswith("  ")]  # "  group / row: perplexities" lines report
    assert work == [] and len(said) == len(_plan(root, paths)["rows"]), said


SHIPPED_PLANS = ["configs/results/smollm2.yaml", "configs/results/smollm2_codec.yaml",
                 "configs/results/smollm2_hetero_modules.yaml", "configs/results/smollm2_four_experts.yaml"]


@pytest.mark.parametrize("plan_file", SHIPPED_PLANS)
def test_shipped_plan_has_control_rows_and_the_evaluation_settings(plan_file):
    """Every section of a shipped plan has its inputs as they are; every curve and hidden-state mix its
    zero point; every section with codec rows an encode-decode without merging; enough test tokens;
    every plan with experts among its rows names them as the corpora's own (the summary number)."""
    plan = load_plan(plan_file)
    assert plan.eval["max_tokens"] >= 16384
    has_experts = any(r.name.startswith("expert") and r.control == "input" for r in plan.rows)
    assert set(plan.domain_experts) == (set(plan.eval["corpora"]) if has_experts else set())
    assert set(plan.references) == set(plan.groups)
    for group in plan.groups:
        rows = [r for r in plan.rows if r.group == group]
        assert any(r.control == "input" for r in rows), group
        if any(r.command in ("merge", "export") for r in rows):
            assert any(r.control == "codec" for r in rows), group
        if any(r.hidden for r in rows):
            for op in {r.hidden["operator"] for r in rows if r.hidden}:
                assert any(r.hidden and r.hidden["operator"] == op and r.hidden["beta"] == 0 and r.control == "zero" for r in rows)
        for curve in {r.curve for r in rows if r.curve}:
            assert any(r.curve == curve and r.x == 0 and r.control == "zero" for r in rows), curve
        if any(r.command == "merge" and "lam" in r.args and r.args["lam"] > 0 for r in rows):
            assert any(r.command == "merge" and r.args.get("lam") == 0 and r.control == "zero" for r in rows), group
    for name in plan.domain_experts.values():
        assert plan.row(name).control == "input"


def test_smollm2_plans_share_one_cache_and_never_disagree_on_a_row():
    """The default plan and its companions write to one out_dir (a row, fit or prepare step done by one
    is reused by the others), and a row name that occurs in two of them is the same row there."""
    plans = [load_plan(f) for f in SHIPPED_PLANS[:3]]
    assert len({p.out_dir for p in plans}) == 1 and len({p.results for p in plans}) == 3
    assert len({p.plots_dir for p in plans}) == 3  # no companion overwrites another plan's plots
    fits = {}
    for p in plans:
        for run in p.vae_runs:
            assert fits.setdefault(run.name, run) == run, run.name
    rows = {}
    for p in plans:
        for r in p.rows:
            same = rows.setdefault(r.slug, r)
            assert (same.command, same.args, same.model, same.config) == (r.command, r.args, r.model, r.config), r.name


def test_vae_run_overrides_set_dotted_keys_and_a_missing_section_is_refused(world, tmp_path):
    base = {"trainer": {}, "data": {"chunk_size": 64}, "model": {"latent_dim": 32}}
    cfg = derive_fit_config(base, ratio=1, minutes=1, out_dir="o", overrides={"model.output_weighting": True, "data.importance": "f"})
    assert cfg["model"]["output_weighting"] is True and cfg["data"]["importance"] == "f" and "output_weighting" not in base["model"]
    root, paths = world
    plan = _plan(root, paths)
    plan["out_dir"] = str(tmp_path / "never")
    plan["vae_runs"][0]["overrides"] = {"modle.output_weighting": True}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    with pytest.raises(LsMergeError, match="the base config has no section 'modle'"):
        load_plan(path)
    assert not (tmp_path / "never").exists()


def test_byte_identical_checkpoints_share_one_score_and_a_changed_one_is_scored(world, tmp_path):
    """Scoring is deterministic in the files, so a row whose checkpoint is byte-identical to one scored
    before (its provenance aside) reuses that score and says whose it is; one changed tensor is scored anew."""
    import shutil

    from safetensors.torch import load_file, save_file

    root, paths = world
    copy, changed = tmp_path / "copy", tmp_path / "changed"
    shutil.copytree(paths["expert1"], copy)
    shutil.copytree(paths["expert1"], changed)
    (copy / "README.md").write_text("written by another command")  # the model card is not part of the content
    resaved = load_file(copy / "model.safetensors")  # nor is the header metadata, where lsmerge records its command
    save_file(resaved, copy / "model.safetensors", metadata={"format": "pt", "lsmerge_config": "{\"command\": \"other\"}"})
    weights = load_file(changed / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    plan = _plan(root, {**paths, "copy": str(copy), "changed": str(changed)})
    plan.update(rows=[{"group": "g", "name": "expert 1", "model": "{expert1}"}, {"group": "g", "name": "copy", "model": "{copy}"},
                      {"group": "g", "name": "changed", "model": "{changed}"}],
                vae_runs=[], sweep=None, inspect=[], judge=None, domain_experts={}, references={}, weight_error={},
                out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"))  # fmt: skip
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    said = []
    Runner(load_plan(path), say=said.append).run()
    assert "score copy: same files as 'expert 1', its score reused" in said and "score changed" in said
    scores = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "out/scores").glob("*.json")}
    assert scores["g-copy"]["same_as"] == "expert 1" and "same_as" not in scores["g-changed"]
    assert scores["g-copy"]["corpora"] == scores["g-expert-1"]["corpora"]
    assert scores["g-changed"]["corpora"]["python"]["nll"] != scores["g-expert-1"]["corpora"]["python"]["nll"]


def test_derived_fit_config_and_ratio():
    base = {"trainer": {"max_steps": 3000}, "data": {"chunk_size": 64, "layers": [0]}, "model": {"latent_dim": 32}}
    cfg = derive_fit_config(base, ratio=1.6, minutes=7.5, out_dir="x/y", steps_per_minute=100)
    assert cfg["model"]["latent_dim"] == 40 == latent_dim_for(64, 1.6)
    assert cfg["trainer"]["max_time"] == "00:00:07:30" and cfg["trainer"]["max_steps"] == 750
    assert cfg["data"]["layers"] is None and base["data"]["layers"] == [0]  # the base is not modified
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "x/y"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["rows"].append({"group": "g", "name": "x", "model": "{nope}"}), "unknown name {nope}"),
        (lambda p: p["rows"].append({"group": "g", "name": "x", "model": "{base}", "command": "merge"}), "exactly one of"),
        (lambda p: p["rows"].append({"group": "g", "name": "x", "command": "fit"}), "not one of"),
        (lambda p: p["rows"].append({"group": "g", "name": "x", "command": "merge", "config": "configs/none.yaml"}), "does not exist"),
        (lambda p: p["rows"].append({"group": "g", "name": "x", "command": "merge", "args": {"out": "o"}}), "must not set out"),
        (lambda p: p["rows"].append(dict(p["rows"][0])), "same group and name"),
        (lambda p: p["judge"].update(pairs=[["TIES", "missing row"]]), "no row named 'missing row'"),
        (lambda p: p.update(colour="red"), "unknown keys ['colour']"),
        (lambda p: p["judge"].update(pairs=[["TIES", "SLERP", "RegMean"]]), "must be [row A, row B]"),
        (lambda p: p["domain_experts"].pop("python"), "domain_experts must name one expert row for each eval corpus"),
        (lambda p: p["domain_experts"].update(python="nobody"), "no row named 'nobody'"),
        (lambda p: p["references"].update(experts="nobody"), "section 'experts' has no row 'nobody'"),
        (lambda p: p["references"].update(nowhere="TIES"), "references: no section 'nowhere'"),
        (lambda p: p["rows"][0].update(control="maybe"), "control 'maybe' is not one of"),
        (lambda p: p["bootstrap"].update(resamples=0), "bootstrap needs resamples >= 1"),
        (lambda p: p["eval"].update(min_tokens=10**6), "gives 64 tokens to score"),
        (lambda p: p["weight_error"].update(nowhere={}), "weight_error.nowhere: no row has group 'nowhere'"),
        (lambda p: p["weight_error"].update(recon={"against": "TIES"}), "against 'TIES' is not a row of that group"),
        (lambda p: p["weight_error"].update(recon={"against": "VAE ratio 2"}), "must come before the group's other rows"),
        (lambda p: p["weight_error"].update(recon={"kind": ["mlp"]}), "keys among"),
        (lambda p: p["prepare"][0].update(cost_records={"files": []}), "cost_records must be"),
        (lambda p: p["prepare"][0].update(cost_records={"files": ["a.json"], "field": 3}), "cost_records must be"),
        (lambda p: p["prepare"][0].pop("creates"), "must have argv and creates"),
        (lambda p: p["prepare"][0].update(when="later"), "must have argv and creates"),
        (lambda p: p["prepare"][0].update(creates=[]), "creates must be a path or a non-empty list of paths"),
        (lambda p: p.update(time_budget_hours=0), "time_budget_hours must be a positive number"),
        (lambda p: p.update(time_budget_hours="3h"), "time_budget_hours must be a positive number"),
    ],
)
def test_bad_plans_are_refused_before_any_work(world, tmp_path, change, message):
    root, paths = world
    plan = _plan(root, paths)
    plan["out_dir"] = str(tmp_path / "never")
    change(plan)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    with pytest.raises(LsMergeError, match=message.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{").replace("}", r"\}")):
        Runner(load_plan(path), say=lambda s: None).run()  # a corpus too small for min_tokens: after prepare, before any row
    assert not (tmp_path / "never").exists()


def test_prepare_step_marked_always_runs_even_when_its_output_exists(tmp_path):
    """A step whose command checks its own cache (experts of a budget) runs every time; the others
    only when `creates` is missing, so an existing folder never stands in for the plan's budget."""
    from lsmerge.results.pipeline import Runner
    from lsmerge.results.plan import Plan

    made = tmp_path / "made"
    made.write_text("")
    log = tmp_path / "log"
    step = ["python", "-c", f"open({str(log)!r}, 'a').write('ran\\n')"]
    plan = Plan(out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"), plots_dir=str(tmp_path), eval={}, rows=[],
                prepare=[{"argv": step, "creates": str(made)}, {"argv": step, "creates": str(made), "always": True}])
    Runner(plan, say=lambda s: None).prepare()
    assert log.read_text() == "ran\n"


def test_prepare_step_with_several_outputs_runs_while_any_is_missing(tmp_path):
    """`creates` may list paths: the step runs when one is missing (a fetch of models and corpora whose
    models are there but not the corpora), is skipped when all exist, and a run that leaves one out fails."""
    from lsmerge.results.pipeline import Runner
    from lsmerge.results.plan import Plan

    a, b, log = tmp_path / "a", tmp_path / "b", tmp_path / "log"
    a.write_text("")
    step = ["python", "-c", f"open({str(log)!r}, 'a').write('ran\\n'); open({str(b)!r}, 'w')"]
    plan = Plan(out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"), plots_dir=str(tmp_path), eval={}, rows=[],
                prepare=[{"argv": step, "creates": [str(a), str(b)]}])
    Runner(plan, say=lambda s: None).prepare()
    Runner(plan, say=lambda s: None).prepare()
    assert log.read_text() == "ran\n" and b.exists()
    plan.prepare[0]["creates"] = [str(a), str(tmp_path / "never")]
    with pytest.raises(LsMergeError, match="did not create .*never"):
        Runner(plan, say=lambda s: None).prepare()


def test_partial_run_computes_nothing_and_lists_the_rows_it_leaves_out(world, tmp_path):
    """`reproduce.py --partial` writes the table from what is cached (a long plan cut short by the
    clock still gives a table), names each missing row, and builds or scores nothing."""
    root, paths = world
    plan = _plan(root, paths)
    plan.update(rows=[{"group": "g", "name": "expert 1", "model": "{expert1}"},
                      {"group": "g", "name": "noise", "command": "perturb", "args": {"model": "{base}", "perturbation": "int8"}}],
                vae_runs=[], sweep=None, inspect=[], domain_experts={}, references={}, weight_error={},
                judge={**plan["judge"], "pairs": [["expert 1", "noise"]]},
                out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"))  # fmt: skip
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    said = []
    Runner(load_plan(path), say=said.append, partial=True).run()
    text = (tmp_path / "R.md").read_text()
    assert "**Partial table**" in text and "2 of the plan's 2 rows" in text and "expert 1; noise" in text
    assert not (tmp_path / "out/models").exists() and not (tmp_path / "out/scores").exists()
    Runner(load_plan(path), say=lambda s: None).run()  # the full run: both rows and the judge
    said.clear()
    Runner(load_plan(path), say=said.append, partial=True).run()
    text = (tmp_path / "R.md").read_text()
    assert "Partial table" not in text and "## Pairwise judge" in text and "| noise |" in text
    lines = text.splitlines()
    for head, rule in zip(lines, lines[1:]):  # every table's delimiter row has one cell per header cell
        if head.startswith("| row |"):
            assert rule.count("---") == head.count("|") - 1, (head, rule)
    assert not any(s.startswith(("build", "score", "generate", "judge")) for s in said)


def test_cost_ledger_by_hand(tmp_path):
    from lsmerge.results.cost import KINDS, StepCost, field_seconds, ledger_lines

    prep, fits, builds, scores, extras = KINDS
    costs = [StepCost(prep, "experts", 1800.0), StepCost(fits, "r1", 300.0), StepCost(builds, "a", 30.0),
             StepCost(scores, "a", 60.0), StepCost(scores, "b (same files as a)", 0.0), StepCost(extras, "sweep", 90.0)]
    lines = ledger_lines(costs, budget_hours=1)
    assert "| row scoring | 2 | 1.0 |  |" in lines and "| **all** | 6 | **38.0** (0.63 h) |  |" in lines
    assert lines[-1].endswith("Against the 1 h target: within.")
    over = ledger_lines(costs + [StepCost(fits, "r2", 3000.0)], budget_hours=1)
    assert "| VAE fits | 2 | 55.0 |  |" in over and over[-1].endswith("target: over.")
    unknown = ledger_lines(costs + [StepCost(prep, "fetch", None)], budget_hours=1)
    assert "| prepare (fetch, experts, statistics) | 2 | 30.0 | 1 |" in unknown
    assert any("not decidable" in line for line in unknown) and unknown[-1].startswith("Steps without a recorded time")
    assert "fetch (prepare" in unknown[-1]
    # a step's cost from the records it writes
    (tmp_path / "a.json").write_text('{"training": {"train_seconds": 12.5}}')
    (tmp_path / "b.json").write_text('{"training": {"train_seconds": 7.5}}')
    (tmp_path / "c.json").write_text('{"training": {}}')
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert field_seconds(files, "training.train_seconds") == 20.0
    assert field_seconds(files + [str(tmp_path / "c.json")], "training.train_seconds") is None
    assert field_seconds(files + [str(tmp_path / "none.json")], "training.train_seconds") is None


def test_prepare_step_time_is_kept_only_when_it_did_the_work(tmp_path):
    from lsmerge.results.pipeline import Runner
    from lsmerge.results.plan import Plan

    made = tmp_path / "made"
    step = ["python", "-c", f"import time; time.sleep(0.2); open({str(made)!r}, 'w').write('')"]
    plan = Plan(out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"), plots_dir=str(tmp_path), eval={}, rows=[],
                prepare=[{"argv": step, "creates": str(made), "always": True}])
    runner = Runner(plan, say=lambda s: None)
    assert runner.costs([])[0].seconds is None
    runner.prepare()
    first = runner.costs([])[0].seconds
    assert first >= 0.2
    runner.prepare()  # an `always` step re-run over its existing output only checks it: the first time stays
    assert runner.costs([])[0].seconds == first


def test_harness_section_scores_a_checkpoint_and_a_hidden_state_row(world, tmp_path):
    """lm-eval through `lsmerge evaluate --tasks` on chosen rows: a checkpoint (--models) and a hidden-state
    mix (--mixes), cached, reported with lm-eval's standard error and counted in the cost."""
    pytest.importorskip("lm_eval")
    root, paths = world
    plan = _plan(root, paths)
    keep = {"expert 1", "expert 2", "hidden SLERP", "TIES", "linear 0.5"}
    plan.update(out_dir=str(tmp_path / "out"), results=str(tmp_path / "R.md"), plots_dir=str(tmp_path / "plots"), vae_runs=[],
                rows=[r for r in plan["rows"] if r["name"] in keep], weight_error={}, judge=None, sweep=None, inspect=[],
                harness={"tasks": ["continuation_shakespeare"], "rows": ["linear 0.5", "hidden SLERP"], "task_items": 2,
                         "batch_size": 2})
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    said = []
    text = Path(Runner(load_plan(path), say=said.append).run()["results"]).read_text()
    assert sum(s.startswith("harness ") for s in said) == 2
    assert any("--mixes" in s and '"operator": "slerp"' in s for s in said if s.startswith("harness hidden SLERP"))
    section = text[text.index("## lm-evaluation-harness"):text.index("## What the numbers show")]
    assert "continuation_shakespeare (2 items, 4 choices, chance 0.25)" in section
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"row", "linear 0.5", "hidden SLERP"}  # a name with a dot: its own result files
    assert "continuation_shakespeare acc" in rows["row"] and " ± " in rows["linear 0.5"] and " ± " in rows["hidden SLERP"]
    # the first row is the reference; the other carries its paired interval over the same items and a verdict
    assert "<br>reference" in rows["linear 0.5"] and "difference to **linear 0.5**" in section
    assert re.search(r"<br>[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] (better|level|worse)", rows["hidden SLERP"])
    cost = text[text.index("## What the run costs"):]
    assert "| sweep, inspect, judge, harness | 2 |" in cost
    said.clear()
    Runner(load_plan(path), say=said.append).run()
    assert not any(s.startswith("harness ") for s in said)  # cached
    # a result written before per-item values were kept is redone (once)
    results = [p for p in (tmp_path / "out" / "harness").glob("*.json") if not p.name.endswith(".stamp.json")]
    stale = next(p for p in results if json.loads(p.read_text())["settings"]["mixes"])  # the hidden-state row's
    data = json.loads(stale.read_text())
    data["settings"]["item_values"] = True  # what a run of an earlier version wrote: a flag, but no items
    data["results"] = [{k: v for k, v in s.items() if k != "items"} for s in data["results"]]
    stale.write_text(json.dumps(data))
    said.clear()
    Runner(load_plan(path), say=said.append).run()
    assert [s.split(":")[0] for s in said if s.startswith("harness ")] == ["harness hidden SLERP"]
    # a task name that resolves nowhere stops the run before any row is built, naming the available ones
    plan.update(out_dir=str(tmp_path / "never"), harness={**plan["harness"], "tasks": ["continuation_klingon"]})
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    with pytest.raises(LsMergeError, match="unknown task 'continuation_klingon'.*continuation_shakespeare"):
        Runner(load_plan(path), say=lambda s: None).run()
    assert not (tmp_path / "never" / "models").exists()


@pytest.mark.parametrize("harness, message", [
    ({"tasks": ["continuation_shakespeare"]}, "harness must be"),
    ({"tasks": [], "rows": ["TIES"]}, "harness.tasks must be a non-empty list"),
    ({"tasks": ["continuation_shakespeare"], "rows": ["nobody"]}, "harness.rows: no row named 'nobody'"),
    ({"tasks": ["continuation_shakespeare"], "rows": ["TIES"], "task_items": 0}, "harness.task_items must be a positive"),
    ({"tasks": ["continuation_shakespeare"], "rows": ["TIES"], "colour": 1}, "harness must be"),
    ({"tasks": ["continuation_shakespeare"], "rows": ["TIES"], "reference": "base"}, "harness.reference 'base' is not one of"),
])
def test_bad_harness_section_is_refused_at_load(world, tmp_path, harness, message):
    root, paths = world
    plan = _plan(root, paths)
    plan["harness"] = harness
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    with pytest.raises(LsMergeError, match=re.escape(message)):
        load_plan(path)


def _harness_result(row, items, task="t"):
    value = sum(items) / len(items)
    return {"row": row, "scores": [{"model": row, "task": task, "metric": "acc", "value": value, "stderr": 0.1,
                                    "n_items": len(items), "model_path": row, "items": items}]}


def test_harness_intervals_are_paired_over_items_and_read_higher_as_better():
    """Differences to the reference on the same items: a row right on 12 more of 40 items is better, one
    wrong on them worse, a copy level at exactly 0; a row on other items is refused, one without items
    gets no interval."""
    from lsmerge.results.harness_rows import harness_lines, paired_items

    ref = [1.0, 0.0] * 20
    up = [1.0 if i < 24 else v for i, v in enumerate(ref)]  # 12 of the wrong answers turned right
    results = [_harness_result("ref", ref), _harness_result("up", up), _harness_result("down", [1 - v for v in up]),
               _harness_result("copy", list(ref)), {"row": "old", "scores": [{**_harness_result("old", ref)["scores"][0], "items": None}]}]
    lines = harness_lines({"tasks": ["t"], "rows": [r["row"] for r in results], "reference": "ref"}, results, {"resamples": 500, "confidence": 0.95}, seed=1)
    cell = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert "<br>reference" in cell["ref"]
    assert re.search(r"<br>\+0\.300 \[\+0\.\d{3}, \+0\.\d{3}\] better", cell["up"]), cell["up"]
    assert "<br>-0.300 [" in cell["down"] and cell["down"].endswith("worse |")
    assert "<br>+0.000 [+0.000, +0.000] level" in cell["copy"]
    assert "<br>" not in cell["old"]
    iv = paired_items(results[1]["scores"][0], results[0]["scores"][0], resamples=500, confidence=0.95, seed=1)
    assert iv.estimate == pytest.approx(0.3) and 0 < iv.low < 0.3 < iv.high
    with pytest.raises(LsMergeError, match="answered 39 items and the reference ref 40"):
        paired_items(_harness_result("short", ref[:39])["scores"][0], results[0]["scores"][0], resamples=10, confidence=0.95, seed=0)
