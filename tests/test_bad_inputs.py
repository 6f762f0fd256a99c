"""Bad inputs, one row each, through `lsmerge.cli.main` in this process: every row must fail with
its message fragment on stderr (exit != 0, or an LsMergeError for the Lightning commands), leave
nothing at the output target (no temporary folder beside it either) and leave every input byte
for byte as it was. A regression guard over all commands; plus merge determinism / provenance
(outputs do not depend on --out; input digests recorded) and URL redaction."""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_llama
from lsmerge.errors import LsMergeError

LATIN1 = "caf\xe9 na\xefve r\xe9sum\xe9\n".encode("latin-1")


@pytest.fixture(scope="module")
def bad(tiny_world, vae_fit_run, task_code_vae_run, tmp_path_factory) -> SimpleNamespace:
    """The inputs of the matrix: tiny_world's models plus broken files and folders."""
    from safetensors.torch import load_file, save_file

    root = Path(tmp_path_factory.mktemp("bad_inputs"))
    (root / "latin1.txt").write_bytes(LATIN1)
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("\n\n   \n")
    (root / "prompts_latin1.txt").write_bytes(LATIN1)
    (root / "resp_latin1.jsonl").write_bytes(b'{"prompt": "a", "response": "' + "\xe9".encode("latin-1") + b'"}\n')
    (root / "resp_ok.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    (root / "resp_badjson.jsonl").write_text("{not json\n")
    (root / "not_a_ckpt.ckpt").write_text("hello")
    (root / "not.gguf").write_text("not a gguf file")
    shutil.copytree(tiny_world.e1, root / "noconfig")
    (root / "noconfig" / "config.json").unlink()
    shutil.copytree(tiny_world.e2, root / "noconfig2")
    (root / "noconfig2" / "config.json").unlink()
    shutil.copytree(tiny_world.e1, root / "nan")
    sd = load_file(root / "nan" / "model.safetensors")
    name = next(n for n in sd if "mlp" in n)
    sd[name][0, 0] = float("nan")
    save_file(sd, root / "nan" / "model.safetensors", metadata={"format": "pt"})
    # a codec fitted on [mlp] only (used with the default kinds [mlp, attn] it is partial)
    from lsmerge.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        main(["merge", "--models", f"[{tiny_world.e1},{tiny_world.e2}]", "--kinds", "[mlp]", "--chunk_size", "16", "--rank", "8",
              "--save_codec", str(root / "mlp_codec"), "--out", str(root / "codec_run"), "--progress", "false"])
    # the VAE of vae_fit_run knows the 2 layers of vae_llama; these have 4 layers of the same width
    for i, name in enumerate(("deep_a", "deep_b")):
        make_tiny_llama(root / name, seed=10 + i, layers=4, hidden=64, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    make_tiny_llama(root / "wide", seed=3, hidden=48, intermediate_size=128)
    # a task-vector codec built on base with experts e1, e2
    with contextlib.redirect_stdout(io.StringIO()):
        main(["merge", "--models", f"[{tiny_world.e1},{tiny_world.e2}]", "--base", str(tiny_world.base), "--codec", "task_vector",
              "--save_codec", str(root / "tv_codec"), "--out", str(root / "tv_run"), "--progress", "false"])
    _weighted_pca_without_statistics(tiny_world.e1, root / "weighted_pca")
    # a VAE fitted on task-vector codes (base; e1, e2) and a copy without its inputs' digests (fitted before they were kept)
    raw = torch.load(task_code_vae_run / "last.ckpt", weights_only=True, map_location="cpu")
    del raw["datamodule_hyper_parameters"]["task_code_inputs"]
    torch.save(raw, root / "tcvae_no_digests.ckpt")
    return SimpleNamespace(root=root, w=tiny_world, vae=vae_fit_run / "last.ckpt", tcvae=task_code_vae_run / "last.ckpt", **{
        n: root / n for n in ("noconfig", "noconfig2", "nan", "mlp_codec", "deep_a", "deep_b", "wide", "tv_codec")})


def _tree_digest(paths) -> dict[str, str]:
    out = {}
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str]) -> tuple[object, str]:
    """(exit code, or "raised" for an LsMergeError out of main; stderr + the error's text)."""
    from lsmerge.cli import main

    err = io.StringIO()
    code: object = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
        except LsMergeError as e:
            code = "raised"
            err.write(str(e))
    return code, err.getvalue()


def _pca():
    return ["--chunk_size", "16", "--rank", "8", "--progress", "false"]


# id, argv(b, out) -> list, expected fragment (case-insensitive). `out` is the target path.
ROWS = [
    # -- merge-weights ---------------------------------------------------------------------------
    ("mw-nonfinite-lambda", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "task_arithmetic", "--parameters", "{lambda: 1.0e39}", "--out", o], "NaN / Inf"),
    ("mw-nonfinite-ties", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "ties", "--parameters", "{density: 0.5, lambda: 1.0e39}", "--out", o], "lower"),
    ("mw-missing-model", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.root}/nowhere]", "--out", o], "nowhere"),
    ("mw-no-config", lambda b, o: ["merge-weights", "--models", f"[{b.noconfig},{b.noconfig2}]", "--out", o], "no config.json"),
    ("mw-nan-input", lambda b, o: ["merge-weights", "--models", f"[{b.nan},{b.w.e2}]", "--out", o], "NaN"),
    ("mw-regmean-empty-calib", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "regmean",
     "--calibration", json.dumps({"files": [str(b.root / "empty.txt")]}), "--out", o], "is empty"),
    ("mw-regmean-blank-calib", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "regmean",
     "--calibration", json.dumps({"files": [str(b.root / "blank.txt")]}), "--out", o], "is empty"),
    ("mw-regmean-latin1-calib", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "regmean",
     "--calibration", json.dumps({"files": [str(b.root / "latin1.txt")]}), "--out", o], "not valid UTF-8 at byte 3"),
    ("mw-regmean-missing-calib", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "regmean",
     "--calibration", json.dumps({"files": [str(b.root / "nope.txt")]}), "--out", o], "does not exist"),
    ("mw-regmean-no-calib", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "regmean",
     "--out", o], "calibration"),
    ("mw-out-is-input", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--out", str(b.w.e1)], "overlaps"),
    ("mw-out-inside-input", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--out", str(b.w.e1 / "sub")],
     "overlaps"),
    ("mw-bad-shard-size", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--max_shard_size", "2XB",
     "--out", o], "shard size"),
    ("mw-different-arch", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.deep}]", "--out", o], "deep"),
    ("mw-unknown-method", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "bogus", "--out", o],
     "bogus"),
    ("mw-ta-no-base", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "task_arithmetic",
     "--out", o], "base"),
    ("mw-bad-dtype", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--dtype", "float7", "--out", o], "float7"),
    ("mw-bad-kind", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--kinds", "[norm_x]", "--out", o],
     "norm_x"),
    ("mw-layer-out-of-range", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--layers", "[99]", "--out", o],
     "99"),
    ("mw-missing-mergekit", lambda b, o: ["merge-weights", "--mergekit_config", str(b.root / "nope.yml"), "--out", o], "nope.yml"),
    ("mw-ties-density", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "ties", "--parameters", "{density: 1.5}", "--out", o], "density"),
    # -- merge (latent) --------------------------------------------------------------------------
    ("merge-nonfinite-lam", lambda b, o: ["merge", "--method", "task_arithmetic", "--models", f"[{b.w.e1},{b.w.e2}]",
     "--base", str(b.w.base), "--lam", "1.0e39", *_pca(), "--out", o], "NaN / Inf"),
    ("merge-partial-pca-codec", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--codec", str(b.mlp_codec),
     "--progress", "false", "--out", o], "not covered"),
    ("merge-partial-vae-layers", lambda b, o: ["merge", "--models", f"[{b.deep_a},{b.deep_b}]", "--codec", str(b.vae),
     "--kinds", "[mlp]", "--progress", "false", "--out", o], "allow_partial_codec"),
    ("merge-no-config", lambda b, o: ["merge", "--models", f"[{b.noconfig},{b.noconfig2}]", *_pca(), "--out", o], "no config.json"),
    ("merge-nan-input", lambda b, o: ["merge", "--models", f"[{b.nan},{b.w.e2}]", *_pca(), "--out", o], "NaN"),
    ("merge-missing-codec", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--codec", str(b.root / "nocodec"),
     "--progress", "false", "--out", o], "not found"),
    ("merge-bad-codec-file", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--codec", str(b.root / "not_a_ckpt.ckpt"),
     "--progress", "false", "--out", o], "truncated or corrupt"),
    ("merge-lam-out-of-unit", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--lam", "2", *_pca(), "--out", o], "lam"),
    ("merge-soup-weights", lambda b, o: ["merge", "--method", "soup", "--models", f"[{b.w.e1},{b.w.e2}]", "--weights", "[0.9, 0.9]",
     *_pca(), "--out", o], "weights"),
    ("merge-hetero-one-codec", lambda b, o: ["merge", "--method", "hetero", "--models", f"[{b.w.base},{b.w.deep}]",
     "--codec", str(b.mlp_codec), "--out", o], "a codec for each side"),
    ("merge-base-in-models", lambda b, o: ["merge", "--method", "task_arithmetic", "--models", f"[{b.w.e1},{b.w.base}]",
     "--base", str(b.w.base), *_pca(), "--out", o], "also listed"),
    ("merge-different-arch", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.deep}]", *_pca(), "--out", o], "hetero"),
    ("merge-bad-method", lambda b, o: ["merge", "--method", "bogus", "--models", f"[{b.w.e1},{b.w.e2}]", "--out", o], "bogus"),
    ("merge-one-model-lerp", lambda b, o: ["merge", "--models", f"[{b.w.e1}]", *_pca(), "--out", o], "lerp takes"),
    ("merge-bad-delta", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--delta", "weird", "--out", o], "weird"),
    ("merge-delta-no-base", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--delta", "latent", *_pca(),
     "--out", o], "base"),
    ("merge-bad-kinds", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--kinds", "[norm_x]", *_pca(), "--out", o],
     "unknown module kind"),
    ("merge-out-not-empty", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", *_pca(), "--out", str(b.root / "codec_run")],
     "not empty"),
    # -- export ----------------------------------------------------------------------------------
    ("export-partial-vae", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a), "--out", o], "not covered"),
    ("export-missing-vae", lambda b, o: ["export", "--vae", str(b.root / "none.ckpt"), "--model", str(b.deep_a), "--out", o],
     "does not exist"),
    ("export-not-a-ckpt", lambda b, o: ["export", "--vae", str(b.root / "not_a_ckpt.ckpt"), "--model", str(b.deep_a), "--out", o],
     "truncated or corrupt"),
    ("export-bad-regex", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a), "--only", "(", "--out", o],
     "not a valid regex"),
    ("export-only-none", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a), "--only", "zzz", "--out", o],
     "matches none"),
    ("export-other-shapes", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.wide), "--out", o], "shape"),
    ("export-out-is-model", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a), "--out", str(b.deep_a)],
     "overlaps"),
    # -- evaluate --------------------------------------------------------------------------------
    ("eval-latin1", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.root / 'latin1.txt'}]", "--out", o],
     "not valid UTF-8 at byte 3"),
    ("eval-empty", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.root / 'empty.txt'}]", "--out", o],
     "is empty"),
    ("eval-missing-text", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.root / 'no.txt'}]", "--out", o],
     "does not exist"),
    ("eval-nothing", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--out", o], "nothing to evaluate"),
    ("eval-corpus-missing", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--corpora", "[shakespeare]",
     "--root", str(b.root), "--out", o], "not prepared"),
    ("eval-window", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.w.text}]", "--max_length", "1",
     "--out", o], "max_length"),
    ("eval-stride", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.w.text}]", "--stride", "0",
     "--out", o], "stride"),
    ("eval-batch", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.w.text}]", "--batch_size", "0",
     "--out", o], "batch_size"),
    ("eval-missing-model", lambda b, o: ["evaluate", "--models", f"[{b.root / 'nomodel'}]", "--texts", f"[{b.w.text}]",
     "--out", o], "nomodel"),
    ("eval-bad-encoding-option", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.w.text}]",
     "--encoding_errors", "ignore", "--out", o], "encoding_errors"),
    # -- generate / steer ------------------------------------------------------------------------
    ("gen-latin1-prompts", lambda b, o: ["generate", "--base", str(b.w.base), "--operator", "null", "--prompts", str(b.root / "prompts_latin1.txt"),
     "--output", o], "not valid UTF-8"),
    ("gen-missing-prompts", lambda b, o: ["generate", "--base", str(b.w.base), "--operator", "null", "--prompts", str(b.root / "none.txt"),
     "--output", o], "not found"),
    ("gen-empty-prompts", lambda b, o: ["generate", "--base", str(b.w.base), "--operator", "null", "--prompts", str(b.root / "blank.txt"),
     "--output", o], "empty"),
    ("gen-lerp-no-source", lambda b, o: ["generate", "--base", str(b.w.base), "--prompts", '["hi"]', "--operator", "lerp",
     "--output", o], "fine"),
    ("gen-beta", lambda b, o: ["generate", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]", "--prompts", '["hi"]',
     "--operator", "lerp", "--beta", "2", "--output", o], "beta"),
    ("gen-mix-layer", lambda b, o: ["generate", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]", "--prompts", '["hi"]',
     "--operator", "lerp", "--mix_layer", "99", "--output", o], "99"),
    ("steer-latin1-prompts", lambda b, o: ["steer", "--base", str(b.w.base), "--fine_tuned", str(b.w.e1),
     "--prompts", str(b.root / "prompts_latin1.txt"), "--output", o], "not valid UTF-8"),
    ("steer-missing-prompts", lambda b, o: ["steer", "--base", str(b.w.base), "--fine_tuned", str(b.w.e1),
     "--prompts", str(b.root / "none.txt"), "--output", o], "not found"),
    ("steer-output-exists", lambda b, o: ["steer", "--base", str(b.w.base), "--fine_tuned", str(b.w.e1),
     "--prompts", '["hi"]', "--output", str(b.w.text)], "exists"),
    # -- sweep -----------------------------------------------------------------------------------
    ("sweep-latin1", lambda b, o: ["sweep", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]",
     "--text", str(b.root / "latin1.txt"), "--output_dir", o], "not valid UTF-8"),
    ("sweep-missing-text", lambda b, o: ["sweep", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]",
     "--text", str(b.root / "none.txt"), "--output_dir", o], "not found"),
    ("sweep-beta", lambda b, o: ["sweep", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]", "--text", str(b.w.text),
     "--ratios", "[2.0]", "--output_dir", o], "beta"),
    ("sweep-operator", lambda b, o: ["sweep", "--base", str(b.w.base), "--fine_tuned", f"[{b.w.e1}]", "--text", str(b.w.text),
     "--operators", "[bogus]", "--output_dir", o], "bogus"),
    # -- judge -----------------------------------------------------------------------------------
    ("judge-latin1", lambda b, o: ["judge", "--responses_a", str(b.root / "resp_latin1.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--model", str(b.w.base), "--out", o], "not valid UTF-8"),
    ("judge-missing", lambda b, o: ["judge", "--responses_a", str(b.root / "none.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--model", str(b.w.base), "--out", o], "does not exist"),
    ("judge-bad-json", lambda b, o: ["judge", "--responses_a", str(b.root / "resp_badjson.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--model", str(b.w.base), "--out", o], "not valid JSON"),
    ("judge-url-credentials", lambda b, o: ["judge", "--judge", "endpoint", "--model", "m",
     "--base_url", "http://alice:hunter2@127.0.0.1:9/v1", "--responses_a", str(b.root / "resp_ok.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--out", o], "carries credentials"),
    ("judge-not-http", lambda b, o: ["judge", "--judge", "endpoint", "--model", "m", "--base_url", "ftp://h/v1?token=hunter2",
     "--responses_a", str(b.root / "resp_ok.jsonl"), "--responses_b", str(b.root / "resp_ok.jsonl"), "--out", o],
     "not an http"),
    ("judge-no-model", lambda b, o: ["judge", "--responses_a", str(b.root / "resp_ok.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--out", o], "needs --model"),
    ("judge-confidence", lambda b, o: ["judge", "--responses_a", str(b.root / "resp_ok.jsonl"),
     "--responses_b", str(b.root / "resp_ok.jsonl"), "--model", str(b.w.base), "--confidence", "2", "--out", o], "confidence"),
    # -- inspect ---------------------------------------------------------------------------------
    ("inspect-no-config", lambda b, o: ["inspect", "--model", str(b.noconfig), "--plot", o + ".png"], "no config.json"),
    ("inspect-missing", lambda b, o: ["inspect", "--model", str(b.root / "nomodel"), "--plot", o + ".png"], "nomodel"),
    ("inspect-bad-pattern", lambda b, o: ["inspect", "--model", str(b.w.e1), "--layer_pattern", "(", "--plot", o + ".png"],
     "not a valid regex"),
    # -- import-gguf -----------------------------------------------------------------------------
    ("gguf-missing", lambda b, o: ["import-gguf", "--gguf", str(b.root / "none.gguf"), "--out", o], "none.gguf"),
    ("gguf-not-gguf", lambda b, o: ["import-gguf", "--gguf", str(b.root / "not.gguf"), "--out", o], "gguf"),
    ("gguf-bad-dtype", lambda b, o: ["import-gguf", "--gguf", str(b.root / "not.gguf"), "--dtype", "float7", "--out", o],
     "float7"),
    # -- fit (argument and config errors only) ---------------------------------------------------
    ("fit-missing-config", lambda b, o: ["fit", "--config", str(b.root / "none.yaml")], "none.yaml"),
    ("fit-missing-checkpoint", lambda b, o: ["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{b.root / 'nomodel'}]",
     f"--data.cache_dir={o}/cache", f"--trainer.default_root_dir={o}"], "nomodel"),
    ("fit-no-config-json", lambda b, o: ["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{b.noconfig}]",
     f"--data.cache_dir={o}/cache", f"--trainer.default_root_dir={o}"], "config.json"),
    ("fit-bad-kind", lambda b, o: ["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{b.w.e1}]",
     "--data.kinds=[norm_x]", f"--data.cache_dir={o}/cache", f"--trainer.default_root_dir={o}"], "norm_x"),
    # -- evaluate: token counts and intervals against a reference ---------------------------------
    ("eval-min-tokens", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--texts", f"[{b.w.text}]", "--min_tokens", "100000",
     "--out", o], "are needed (--min_tokens)"),
    ("eval-reference-resamples", lambda b, o: ["evaluate", "--models", f"[{b.w.e1}]", "--texts", f"[{b.w.text}]", "--reference",
     str(b.w.base), "--resamples", "0", "--out", o], "resamples=0"),
    # -- evaluate --tasks (lm-eval; these checks run before lm-eval is needed) -------------------
    ("eval-unknown-task", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--tasks", "[bogus_task]", "--root",
     str(b.root), "--out", o], "unknown task 'bogus_task'. Available here"),
    ("eval-task-bad-row", lambda b, o: ["evaluate", "--models", f"[{b.w.base}]", "--tasks", "[bad_rows]", "--task_dir",
     _bad_task_dir(), "--out", o], "rows.jsonl row 2 is not valid JSON"),
    ("eval-mixes-without-tasks", lambda b, o: ["evaluate", "--mixes", f"[{{base: {b.w.base}, fine_tuned: [{b.w.e1}]}}]",
     "--texts", f"[{b.w.text}]", "--out", o], "pass --tasks"),
    # -- task-vector codec (merge --codec task_vector, fit data.source task_codes) -------------------
    ("merge-tv-no-experts", lambda b, o: ["merge", "--method", "task_arithmetic", "--models", "[]", "--base", str(b.w.base),
     "--codec", "task_vector", "--progress", "false", "--out", o], "no models given"),
    ("merge-tv-lerp-one-expert", lambda b, o: ["merge", "--models", f"[{b.w.e1}]", "--base", str(b.w.base), "--codec",
     "task_vector", "--progress", "false", "--out", o], "lerp takes"),
    ("merge-tv-no-base", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--codec", "task_vector",
     "--progress", "false", "--out", o], "set base"),
    ("merge-tv-rank-fraction-high", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.base),
     "--codec", "task_vector", "--rank_fraction", "1.5", "--progress", "false", "--out", o], "(0, 1]"),
    ("merge-tv-rank-fraction-zero", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.base),
     "--codec", "task_vector", "--rank_fraction", "0", "--progress", "false", "--out", o], "(0, 1]"),
    ("merge-tv-base-shapes", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.wide),
     "--codec", "task_vector", "--progress", "false", "--out", o], "shape"),
    ("merge-tv-base-names", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.deep),
     "--codec", "task_vector", "--progress", "false", "--out", o], "deep"),
    ("merge-tv-other-experts", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e3}]", "--base", str(b.w.base),
     "--codec", str(b.tv_codec), "--progress", "false", "--out", o], "another set"),
    ("merge-tv-other-base", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.e3),
     "--codec", str(b.tv_codec), "--progress", "false", "--out", o], "built on base"),
    ("merge-tv-delta", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.base),
     "--codec", "task_vector", "--delta", "weight", "--progress", "false", "--out", o], "delta: none"),
    ("fit-task-codes-no-base", lambda b, o: ["fit", "--config", "configs/vae/tiny_task_codes.yaml", "--data.base=null",
     f"--data.checkpoints=[{b.w.e1},{b.w.e2}]", f"--data.cache_dir={o}/cache", f"--trainer.default_root_dir={o}"], "data.base"),
    ("fit-task-codes-rank", lambda b, o: ["fit", "--config", "configs/vae/tiny_task_codes.yaml", f"--data.base={b.w.base}",
     "--data.rank_fraction=0", f"--data.checkpoints=[{b.w.e1},{b.w.e2}]", f"--data.cache_dir={o}/cache",
     f"--trainer.default_root_dir={o}"], "(0, 1]"),
    ("fit-task-codes-other-base", lambda b, o: ["fit", "--config", "configs/vae/tiny_task_codes.yaml", f"--data.base={b.wide}",
     f"--data.checkpoints=[{b.w.e1},{b.w.e2}]", f"--data.cache_dir={o}/cache", f"--trainer.default_root_dir={o}"],
     "not fine-tuned from this base"),
    ("merge-tv-hetero", lambda b, o: ["merge", "--method", "hetero", "--models", f"[{b.w.base},{b.w.deep}]", "--codec",
     "task_vector", "--progress", "false", "--out", o], "codes experts of one base"),
    ("merge-rank-fraction-pca", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--rank_fraction", "0.5", *_pca(),
     "--out", o], "task-vector codec"),
    # -- merge-weights: mergekit recipe layouts ------------------------------------------------------
    ("mw-mergekit-layer-range-past-depth", lambda b, o: _recipe(
        f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {b.w.e1}\n        layer_range: [0, 99]\n", o),
     "past the model's depth"),
    ("mw-mergekit-slice-shapes-differ", lambda b, o: _recipe(
        f"merge_method: linear\nparameters: {{weight: 1}}\nslices:\n  - sources:\n      - model: {b.w.e1}\n"
        f"        layer_range: [0, 1]\n      - model: {b.wide}\n        layer_range: [0, 1]\n", o), "disagree in shape"),
    ("mw-mergekit-tokenizer-not-a-model", lambda b, o: _recipe(
        f"merge_method: linear\nparameters: {{weight: 1}}\nmodels:\n  - model: {b.w.e1}\n  - model: {b.w.e2}\n"
        f"tokenizer_source: {b.deep_a}\n", o), "not among the recipe's models"),
    # -- importance, side channel, output weighting (issue 13) -------------------------------------
    ("importance-missing-calib", lambda b, o: ["importance", "--model", str(b.w.base), "--calibration",
     json.dumps({"files": [str(b.root / "nope.txt")]}), "--out", o], "does not exist"),
    ("importance-empty-calib", lambda b, o: ["importance", "--model", str(b.w.base), "--calibration",
     json.dumps({"files": [str(b.root / "empty.txt")]}), "--out", o], "is empty"),
    ("importance-blank-calib", lambda b, o: ["importance", "--model", str(b.w.base), "--calibration",
     json.dumps({"files": [str(b.root / "blank.txt")]}), "--out", o], "is empty"),
    ("importance-no-calib", lambda b, o: ["importance", "--model", str(b.w.base), "--out", o], "needs calibration text"),
    ("export-side-channel-too-large", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a),
     "--side_channel", "0.7", "--out", o], "(0, 0.5]"),
    ("export-side-channel-negative", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a),
     "--side_channel", "-0.01", "--out", o], "(0, 0.5]"),
    ("export-side-select-unknown", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a),
     "--side_channel", "0.01", "--side_select", "biggest", "--out", o], "unknown side-channel selection"),
    ("export-side-select-unknown-no-channel", lambda b, o: ["export", "--vae", str(b.vae), "--model", str(b.deep_a),
     "--side_select", "biggest", "--out", o], "unknown side-channel selection"),
    ("merge-weighted-codec-no-statistics", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--kinds", "[mlp]",
     "--codec", str(b.root / "weighted_pca"), "--progress", "false", "--out", o], "importance weighting"),
    ("fit-output-weighting-no-importance", lambda b, o: ["fit", "--config", "configs/vae/tiny.yaml",
     f"--data.checkpoints=[{b.w.e1}]", "--model.output_weighting=true", f"--data.cache_dir={o}/cache",
     f"--trainer.default_root_dir={o}"], "data.importance"),
    ("fit-importance-missing", lambda b, o: ["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{b.w.e1}]",
     f"--data.importance={b.root / 'none.safetensors'}", "--model.output_weighting=true", f"--data.cache_dir={o}/cache",
     f"--trainer.default_root_dir={o}"], "do not exist"),
    # -- merge-weights: task-matrix (SVD) methods --------------------------------------------------
    ("mw-tsv-one-expert", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--base_model", str(b.w.base),
     "--method", "tsv", "--out", o], "at least 2"),
    ("mw-knots-one-expert", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--base_model", str(b.w.base),
     "--method", "knots_ties", "--out", o], "at least 2"),
    ("mw-tsv-rank-fraction-zero", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model",
     str(b.w.base), "--method", "tsv", "--parameters", "{rank_fraction: 0}", "--out", o], "rank_fraction=0"),
    ("mw-tsv-rank-fraction-above-one", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model",
     str(b.w.base), "--method", "tsv", "--parameters", "{rank_fraction: 1.5}", "--out", o], "rank_fraction=1.5"),
    ("mw-iso-cts-common-fraction", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model",
     str(b.w.base), "--method", "iso_cts", "--parameters", "{common_fraction: 0}", "--out", o], "common_fraction=0"),
    ("mw-tsv-base-other-shape", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.wide),
     "--method", "tsv", "--out", o], "same size"),
    # -- merge-weights: mergekit's sparse / consensus methods ------------------------------------
    ("mw-della-epsilon", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "della", "--parameters", "{density: 0.1, epsilon: 0.15}", "--out", o], "epsilon"),
    ("mw-breadcrumbs-gamma", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "breadcrumbs", "--parameters", "{density: 0.5, gamma: 1.5}", "--out", o], "gamma"),
    ("mw-sce-select-topk", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "sce", "--parameters", "{select_topk: 2}", "--out", o], "select_topk"),
    ("mw-ram-epsilon", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "ramplus_tl", "--parameters", "{epsilon: -1.0}", "--out", o], "epsilon"),
    # -- merge-weights: mergekit's model_stock, karcher, nuslerp, multislerp, nearswap, arcee_fusion --
    ("mw-model-stock-one-model", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--base_model", str(b.w.base),
     "--method", "model_stock", "--out", o], "at least 2"),
    ("mw-model-stock-filter-wise", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "model_stock", "--parameters", "{filter_wise: 3}", "--out", o], "filter_wise"),
    ("mw-karcher-max-iter", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "karcher",
     "--parameters", "{max_iter: 0}", "--out", o], "max_iter"),
    ("mw-karcher-tol", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "karcher",
     "--parameters", "{tol: -1.0}", "--out", o], "tol"),
    ("mw-nuslerp-three-models", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2},{b.w.base}]", "--method", "nuslerp",
     "--out", o], "exactly 2"),
    ("mw-nuslerp-weight", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "nuslerp",
     "--parameters", "{weight: [1.0, .inf]}", "--out", o], "weight"),
    ("mw-nuslerp-base-in-models", lambda b, o: ["merge-weights", "--models", f"[{b.w.base},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "nuslerp", "--out", o], "also listed in models"),
    ("mw-multislerp-eps", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "multislerp",
     "--parameters", "{eps: 0.0}", "--out", o], "eps"),
    ("mw-multislerp-weights-sum-zero", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--method", "multislerp",
     "--parameters", "{weight: [1.0, -1.0]}", "--out", o], "sum to 0"),
    ("mw-nearswap-t", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--base_model", str(b.w.base), "--method", "nearswap",
     "--parameters", "{t: 0.0}", "--out", o], "> 0"),
    ("mw-nearswap-no-t", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--base_model", str(b.w.base), "--method", "nearswap",
     "--out", o], "required"),
    ("mw-arcee-fusion-no-base", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1}]", "--method", "arcee_fusion", "--out", o],
     "base_model"),
    ("mw-arcee-fusion-two-models", lambda b, o: ["merge-weights", "--models", f"[{b.w.e1},{b.w.e2}]", "--base_model", str(b.w.base),
     "--method", "arcee_fusion", "--out", o], "exactly 1"),
    # -- merge: the side channel through a latent merge (issue 13) -------------------------------
    ("merge-side-channel-not-linear", lambda b, o: ["merge", "--method", "ties", "--models", f"[{b.w.e1},{b.w.e2}]",
     "--base", str(b.w.base), "--side_channel", "0.01", *_pca(), "--out", o], "not linear"),
    ("merge-side-channel-delta", lambda b, o: ["merge", "--method", "lerp", "--models", f"[{b.w.e1},{b.w.e2}]",
     "--base", str(b.w.base), "--delta", "latent", "--side_channel", "0.01", *_pca(), "--out", o], "already cancels"),
    ("merge-side-channel-task-vector", lambda b, o: ["merge", "--method", "task_arithmetic", "--models",
     f"[{b.w.e1},{b.w.e2}]", "--base", str(b.w.base), "--codec", "task_vector", "--side_channel", "0.01",
     "--progress", "false", "--out", o], "task-vector codec"),
    ("merge-side-channel-too-large", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--side_channel", "0.7",
     *_pca(), "--out", o], "(0, 0.5]"),
    ("merge-importance-unused", lambda b, o: ["merge", "--models", f"[{b.w.e1},{b.w.e2}]", "--importance",
     str(b.root / "none.safetensors"), *_pca(), "--out", o], "would be unused"),
    # -- merge through a VAE fitted on task-vector codes (lsmerge.codecs.task_code_vae) -------------------
    ("merge-tcvae-other-base", lambda b, o: _tcvae(b, o, "--base", str(b.w.e3)), "differs from it"),
    ("merge-tcvae-other-experts", lambda b, o: _tcvae(b, o, "--models", f"[{b.w.e1},{b.w.e3}]"), "another set"),
    ("merge-tcvae-no-base", lambda b, o: _tcvae(b, o, "--base", "null"), "set base"),
    ("merge-tcvae-delta-weight", lambda b, o: _tcvae(b, o, "--delta", "weight"), "apply it twice"),
    ("merge-tcvae-ties-delta-latent", lambda b, o: _tcvae(b, o, "--method", "ties", "--delta", "latent"), "not linear"),
    ("merge-tcvae-rank-fraction", lambda b, o: _tcvae(b, o, "--rank_fraction", "0.25"), "fitted at"),
    ("merge-tcvae-side-channel", lambda b, o: _tcvae(b, o, "--side_channel", "0.01"), "no side channel"),
    ("merge-tcvae-no-digests", lambda b, o: _tcvae(b, o, "--codec", str(b.root / "tcvae_no_digests.ckpt")), "refit it"),
    ("export-task-code-vae", lambda b, o: ["export", "--vae", str(b.tcvae), "--model", str(b.w.e1), "--out", o], "task-vector codes"),
]


def _tcvae(b, out: str, *args: str) -> list[str]:
    """merge soup through the task-code VAE on its own base and experts, then `args` (argparse: the last value wins)."""
    return ["merge", "--method", "soup", "--codec", str(b.tcvae), "--base", str(b.w.base), "--models", f"[{b.w.e1},{b.w.e2}]",
            "--kinds", "[mlp]", "--progress", "false", "--out", out, *args]


def _recipe(text: str, out: str) -> list[str]:
    """merge-weights on a mergekit recipe written to a fresh temporary folder (never beside the inputs)."""
    import tempfile

    yml = Path(tempfile.mkdtemp(prefix="lsmerge-bad-recipe-")) / "recipe.yml"
    yml.write_text(text)
    return ["merge-weights", "--mergekit_config", str(yml), "--progress", "false", "--out", out]


def test_matrix_has_every_command():
    commands = {argv(SimpleNamespace(w=SimpleNamespace(**{k: Path(k) for k in ("e1", "e2", "base", "deep", "text", "e3")}),
                                     **{k: Path(k) for k in ("root", "noconfig", "noconfig2", "nan", "mlp_codec", "deep_a",
                                                             "deep_b", "wide", "vae", "tv_codec", "tcvae")}), "o")[0] for _, argv, _ in ROWS}
    assert len(ROWS) >= 60
    assert commands >= {"merge-weights", "merge", "export", "evaluate", "generate", "steer", "sweep", "judge", "inspect",
                        "import-gguf", "fit"}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(row, bad, tmp_path, monkeypatch):
    name, argv, fragment = row
    monkeypatch.setenv("LSMERGE_JUDGE_API_KEY", "sk-secret-key")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # fit configs are relative to the repo
    target = tmp_path / "target" / "out"
    inputs = [bad.root, bad.w.root, bad.vae.parent]
    before = _tree_digest(inputs)
    code, err = run_cli(argv(bad, str(target)))
    assert code not in (0, None), f"{name}: exited 0\n{err}"
    assert fragment.lower() in err.lower(), f"{name}: expected {fragment!r} in:\n{err}"
    assert "hunter2" not in err and "sk-secret-key" not in err
    assert not target.exists(), f"{name}: created {target}"
    leftovers = [p for p in target.parent.iterdir()] if target.parent.exists() else []
    assert not [p for p in leftovers if "lsmerge-tmp" in p.name], leftovers
    assert _tree_digest(inputs) == before, f"{name}: changed an input"


# -- provenance ------------------------------------------------------------------------------------
def _metadata(folder: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return f.metadata()


def test_merge_bytes_do_not_depend_on_out_and_record_input_digests(tiny_world, tmp_path):
    outs = [tmp_path / "one" / "m", tmp_path / "two" / "deeper" / "other-name"]
    for out in outs:
        code, err = run_cli(["merge", "--models", f"[{tiny_world.e1},{tiny_world.e2}]", *_pca(), "--out", str(out)])
        assert code == 0, err
    assert (outs[0] / "model.safetensors").read_bytes() == (outs[1] / "model.safetensors").read_bytes()
    meta = _metadata(outs[0])
    config = json.loads(meta["lsmerge_config"])
    assert not {"out", "out_root", "save_codec", "overwrite", "progress"} & set(config)
    assert str(tmp_path) not in meta["lsmerge_config"] + meta["lsmerge_inputs"]
    digests = json.loads(meta["lsmerge_inputs"])
    assert [d["input"] for d in digests] == ["e1", "e2"]
    files = {f["file"]: f["sha256"] for f in digests[0]["files"]}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"] == hashlib.sha256((tiny_world.e1 / "model.safetensors").read_bytes()).hexdigest()


def test_merge_weights_and_export_record_input_digests(tiny_world, vae_fit_run, vae_llama, tmp_path):
    code, err = run_cli(["merge-weights", "--models", f"[{tiny_world.e1},{tiny_world.e2}]", "--progress", "false",
                         "--out", str(tmp_path / "w")])
    assert code == 0, err
    assert [d["input"] for d in json.loads(_metadata(tmp_path / "w")["lsmerge_inputs"])] == ["e1", "e2"]
    code, err = run_cli(["export", "--vae", str(vae_fit_run / "last.ckpt"), "--model", vae_llama, "--out", str(tmp_path / "x")])
    assert code == 0, err
    digests = json.loads(_metadata(tmp_path / "x")["lsmerge_inputs"])
    assert digests[1]["files"][0]["file"] == "last.ckpt"


def test_writer_refuses_nonfinite_tensor_and_leaves_nothing(tmp_path):
    from lsmerge.io.writer import CheckpointWriter

    with pytest.raises(LsMergeError, match=r"'b'.*NaN / Inf.*lower"):
        with CheckpointWriter(tmp_path / "out", nonfinite_hint="lower it") as w:
            w.add("a", torch.ones(3))
            w.add("b", torch.tensor([1.0, float("inf")]))
    assert list(tmp_path.iterdir()) == []
    # a cast that overflows is caught too
    with pytest.raises(LsMergeError, match="'c'"):
        with CheckpointWriter(tmp_path / "out2", dtype=torch.float16) as w:
            w.add("c", torch.tensor([1e6]))


def test_allow_partial_codec_merges_the_rest_by_fallback(bad, tmp_path):
    code, err = run_cli(["merge", "--models", f"[{bad.w.e1},{bad.w.e2}]", "--codec", str(bad.mlp_codec), "--progress", "false",
                         "--allow_partial_codec", "true", "--out", str(tmp_path / "m")])
    assert code == 0, err
    code, err = run_cli(["export", "--vae", str(bad.vae), "--model", str(bad.deep_a), "--allow_partial_codec", "true",
                         "--out", str(tmp_path / "x")])
    assert code == 0, err


def test_read_text_replace_and_redact_url(tmp_path):
    from lsmerge.io.provenance import redact_url
    from lsmerge.io.text import read_text

    p = tmp_path / "t.txt"
    p.write_bytes(LATIN1)
    with pytest.raises(LsMergeError, match="byte 3.*--encoding_errors replace"):
        read_text(p, "text")
    assert read_text(p, "text", "replace").startswith("caf\ufffd")
    url = redact_url("https://bob:pw123@api.example.com:8443/v1?api_key=abc123&token=t0k&api-version=2024")
    assert "pw123" not in url and "abc123" not in url and "t0k" not in url and "bob" not in url
    assert url.startswith("https://api.example.com:8443/v1?") and "api-version=2024" in url
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


@functools.cache
def _bad_task_dir() -> str:
    """A task folder (outside the matrix's inputs) whose task `bad_rows` has a broken second row."""
    d = Path(tempfile.mkdtemp(prefix="lsmerge-bad-tasks-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    (d / "rows.jsonl").write_text(json.dumps({"context": "a", "choices": ["b", "c"], "label": 0}) + "\n{not json\n")
    (d / "bad_rows.yaml").write_text(f"task: bad_rows\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                     f"    test: {d / 'rows.jsonl'}\noutput_type: multiple_choice\n")
    return str(d)
def _weighted_pca_without_statistics(model: Path, folder: Path) -> None:
    """An output-weighted PCA codec of `model`'s MLP saved to `folder`, its importance file then removed."""
    from lsmerge.codecs.pca import PCACodec
    from lsmerge.data.importance import IMPORTANCE_FILE, ImportanceStats
    from lsmerge.io.store import open_checkpoint

    store = open_checkpoint(model)
    names = [n for n in store.names if ".mlp." in n]
    stats = ImportanceStats({n: torch.ones(store.shape(n)[1]) for n in names}, "ab" * 32)
    PCACodec.fit(((n, [store.get(n)]) for n in names), chunk_size=16, rank=8, importance=stats).save(folder)
    (folder / IMPORTANCE_FILE).unlink()
