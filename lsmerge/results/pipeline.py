"""Run a results plan (`lsmerge.results.plan`): prepare inputs, train the VAEs, build every
row's model, score it, run the sweep / inspect / judge extras, then write the table and plots.

Everything is cached under the plan's `out_dir`, keyed by what produced it (the command line
and the config file's bytes, the evaluation settings): a second run only does what changed,
and a killed run starts again where it stopped. Commands run in this process through
`lsmerge.cli.main`, exactly as `lsmerge <command> ...` would run them; their output goes to
`<out_dir>/logs/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import write_text_atomic
from lsmerge.results.plan import Plan, Row, cli_value, prepare_creates, substitute
from lsmerge.results.checkpoint_content import checkpoint_content_key, weight_errors
from lsmerge.results.cost import KINDS, StepCost, field_seconds
from lsmerge.results.harness_rows import check_tasks, run_harness
from lsmerge.results.scoring import count_tokens, score_model
from lsmerge.results.vae_runs import write_fit_config

DEFAULT_EVAL_TOKENS = 16384  # test tokens per corpus unless the plan says otherwise
SCORES_FORMAT = "per-window-v1"  # part of the scores' cache key: older score files lack the windows


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _flags(values: dict) -> list[str]:
    """`--key value` pairs as jsonargparse reads them (strings as is, the rest as JSON)."""
    return [a for k, v in values.items() for a in (f"--{k}", cli_value(v))]


def _fresh(stamp: Path, key: str, *outputs: Path) -> dict | None:
    """The stamp written when `key`'s outputs were made, if it matches and they all exist."""
    data = _read_json(stamp)
    return data if data and data.get("key") == key and all(p.exists() for p in outputs) else None


def run_lsmerge(argv: list[str], log: Path) -> float:
    """`lsmerge <argv>` in this process, stdout / stderr appended to `log`; wall seconds."""
    from lsmerge.cli import main

    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"$ lsmerge {' '.join(argv)}", flush=True)
        try:
            main(argv)
        except SystemExit as e:
            if isinstance(e.code, int) and e.code > 128:  # SIGTERM / SIGINT: stop the pipeline with the same status
                raise
            if e.code not in (0, None):
                raise LsMergeError(f"`lsmerge {' '.join(argv)}` failed (exit {e.code}); see {log}.") from None
    return time.perf_counter() - start


class NotCached(Exception):
    """A step a partial run (`Runner(partial=True)`) would have to compute."""


class Runner:
    """Executes one plan; `say` prints progress lines. `partial`: run nothing, write the table from
    the rows (and extras) already cached, listing the rest as missing."""

    def __init__(self, plan: Plan, say=print, partial: bool = False):
        self.plan, self.say, self.partial = plan, say, partial
        self.out = Path(plan.out_dir)
        self.names = plan.names()
        self.logs = self.out / "logs"

    # -- inputs ------------------------------------------------------------------------------
    def _prepare_stamp(self, step: dict) -> Path:
        return self.out / "prepare" / f"{_digest(substitute(step['argv'], self.names))}.json"

    def prepare(self) -> None:
        for step in self.plan.prepare:
            creates = [Path(c) for c in substitute(prepare_creates(step), self.names)]
            existed = all(c.exists() for c in creates)
            if existed and not step.get("always", False):
                continue
            argv = [str(a) for a in substitute(step["argv"], self.names)]
            if argv[0] == "lsmerge":
                argv = [sys.executable, "-m", "lsmerge.cli", *argv[1:]]
            elif argv[0] == "python":
                argv = [sys.executable, *argv[1:]]
            self.say(f"prepare: {' '.join(argv)}")
            start = time.perf_counter()
            subprocess.run(argv, check=True)
            if missing := [str(c) for c in creates if not c.exists()]:
                raise LsMergeError(f"prepare step {step['argv']} ran but did not create {', '.join(missing)}.")
            if not existed:  # it did the work (a re-run of an `always` step only checks it): keep its time
                _write_json(self._prepare_stamp(step), {"argv": step["argv"], "seconds": time.perf_counter() - start})

    def costs(self, records: list[dict]) -> list[StepCost]:
        """Every step's recorded wall seconds (`lsmerge.results.cost`): prepare steps (their stamp, or the
        records named by `cost_records`), VAE fits, row builds and scoring, sweep / inspect / judge."""
        prep, fits, builds, scores, extras = KINDS
        out = []
        for step in self.plan.prepare:
            rec = step.get("cost_records")
            if rec:
                seconds = field_seconds([substitute(f, self.names) for f in rec["files"]], rec["field"])
            else:
                seconds = (_read_json(self._prepare_stamp(step)) or {}).get("seconds")
            out.append(StepCost(prep, " ".join(str(a) for a in step["argv"]), seconds))
        for run in self.plan.vae_runs:
            out.append(StepCost(fits, run.name, (_read_json(self.plan.vae_dir(run.name) / "done.json") or {}).get("seconds")))
        for r in records:
            if r["row"].command is not None:
                out.append(StepCost(builds, r["row"].name, r["built"]["seconds"]))
            out.append(StepCost(scores, r["row"].name, r["scores"].get("seconds")))
        for label, stamp in self._extra_stamps():
            out.append(StepCost(extras, label, (_read_json(stamp) or {}).get("seconds")))
        return out

    def train_vaes(self) -> None:
        for run in self.plan.vae_runs:
            d = self.plan.vae_dir(run.name)
            overrides = substitute(run.overrides, self.names)
            cfg = {"base_config": run.base_config, "ratio": run.ratio, "minutes": run.minutes,
                   "steps_per_minute": run.steps_per_minute, "layers": run.layers,
                   "base_digest": _file_digest(run.base_config)}  # fmt: skip
            if overrides:  # with the digests of the files they name (importance statistics), so new ones refit
                cfg["overrides"] = overrides
                cfg["override_files"] = {v: _file_digest(v) for v in overrides.values() if isinstance(v, str) and Path(v).is_file()}
            done = _read_json(d / "done.json")
            if done and done.get("spec") == cfg and (d / "last.ckpt").is_file():
                continue
            if d.exists():
                shutil.rmtree(d)  # a partial or outdated run of ours: start it again
            path = write_fit_config(run.base_config, d, ratio=run.ratio, minutes=run.minutes,
                                    steps_per_minute=run.steps_per_minute, layers=run.layers, overrides=overrides)  # fmt: skip
            self.say(f"VAE {run.name}: lsmerge fit --config {path} ({run.minutes} min)")
            seconds = run_lsmerge(["fit", "--config", str(path)], d / "fit.log")
            _write_json(d / "done.json", {"spec": cfg, "seconds": seconds})

    # -- rows --------------------------------------------------------------------------------
    def row_seed(self, row: Row) -> int:
        return self.plan.seed if row.seed is None else row.seed

    def command_argv(self, row: Row, out: Path) -> list[str]:
        argv = [row.command]
        if row.config:
            argv += ["--config", row.config]
        args = substitute(row.args, self.names)
        if row.command in ("merge", "merge-weights", "perturb"):
            args.setdefault("seed", self.row_seed(row))
        if row.command in ("merge", "merge-weights"):
            args.setdefault("progress", False)
        return argv + _flags(args) + ["--out", str(out)]

    def model_dir(self, row: Row) -> Path:
        return self.out / "models" / row.slug

    def build(self, row: Row) -> dict:
        """Create a command row's model (cached); returns {"path", "seconds", "key"}."""
        if row.model is not None:
            path = substitute(row.model, self.names)
            return {"path": path, "seconds": None, "key": _checkpoint_key(path, row)}
        if row.hidden is not None:
            spec = substitute(row.hidden, self.names)
            key = _digest([spec, _checkpoint_key(spec["base"], row), _checkpoint_key(spec["source"], row)])
            return {"path": None, "seconds": None, "key": key, "hidden": spec}
        out = self.model_dir(row)
        argv = self.command_argv(row, out)
        key = _digest([argv, _file_digest(row.config) if row.config else None] + self._input_keys(row))
        stamp_path = out.with_name(out.name + ".json")
        stamp = _fresh(stamp_path, key, out / "config.json")
        if stamp:
            return {"path": str(out), "seconds": stamp["seconds"], "key": key}
        if self.partial:
            raise NotCached(row.name)
        if out.exists():
            shutil.rmtree(out)
        stamp_path.unlink(missing_ok=True)
        self.say(f"build {row.name}: lsmerge {' '.join(argv)}")
        seconds = run_lsmerge(argv, self.logs / f"{row.slug}.log")
        _write_json(stamp_path, {"key": key, "seconds": seconds, "argv": argv})
        return {"path": str(out), "seconds": seconds, "key": key}

    def _input_keys(self, row: Row) -> list:
        """Digests of the VAE runs a row uses, so retraining rebuilds the row."""
        text = json.dumps(row.args)
        return [_read_json(self.plan.vae_dir(r.name) / "done.json") for r in self.plan.vae_runs if f"{{vae:{r.name}}}" in text]

    def eval_settings(self) -> dict:
        e = dict(self.plan.eval)
        e.setdefault("split", "test")
        e.setdefault("root", "checkpoints")
        e.setdefault("max_length", 512)
        e.setdefault("stride", 256)
        e.setdefault("batch_size", 4)
        e.setdefault("max_tokens", DEFAULT_EVAL_TOKENS)  # per corpus; all of a smaller split
        e.setdefault("min_tokens", None)
        e.setdefault("dtype", "float32")
        return e

    def check_corpora(self) -> None:
        """With eval min_tokens: every corpus gives that many tokens with every plan model's tokenizer
        (refused before any row is built)."""
        settings = self.eval_settings()
        if not settings["min_tokens"]:
            return
        for name, path in self.plan.models.items():
            if (Path(path) / "config.json").is_file():
                count_tokens(path, settings, name)

    def score(self, row: Row, built: dict) -> dict:
        """Perplexity per corpus, cached: {corpus: {"perplexity", "nll", "tokens", "window_nll",
        "window_tokens"}}, "seconds". A checkpoint whose files are byte-identical to one scored
        before (a curve at t = 0 is its first input) reuses that score: scoring is deterministic
        in the weights, config and tokenizer, and the record says whose score it is ("same_as")."""
        settings = self.eval_settings()
        key = _digest([built["key"], settings, SCORES_FORMAT])
        path = self.out / "scores" / f"{row.slug}.json"
        cached = _read_json(path)
        if cached and cached.get("key") == key:
            return cached
        content = _digest([checkpoint_content_key(built["path"]), settings, SCORES_FORMAT]) if built.get("path") else None
        shared = self.out / "scores" / "by-content" / f"{content}.json"
        same = _read_json(shared) if content else None
        if same and (prior := _read_json(self.out / "scores" / f"{same['slug']}.json")) and prior.get("content") == content:
            self.say(f"score {row.name}: same files as {same['row']!r}, its score reused")
            result = {**prior, "key": key, "same_as": same["row"], "seconds": 0.0}
            _write_json(path, result)
            return result
        if self.partial:
            raise NotCached(row.name)
        self.say(f"score {row.name}")
        start = time.perf_counter()
        result = {"key": key, "content": content, "corpora": score_model(built, settings)}
        result["seconds"] = time.perf_counter() - start
        _write_json(path, result)
        if content:
            _write_json(shared, {"row": row.name, "slug": row.slug})
        return result

    def weight_error(self, row: Row, built: dict, done: dict[str, dict]) -> dict | None:
        """Relative error of a row's weights against the section's `weight_error.against` row (its
        first row by default; `done`: the rows built so far), over the tensors of `weight_error.kinds`
        (cached): sqrt(sum ||W - W_ref||^2 / sum ||W_ref||^2), and with `weight_error.importance` the
        output-weighted one (columns weighted by h_j). None for a hidden-state row (no weights), a
        group without `weight_error`, or a partial run without its reference."""
        spec = self.plan.weight_error.get(row.group)
        against = spec and done.get(spec.get("against") or self.plan.first_row(row.group).name)
        if not against or not built.get("path") or not against.get("path"):
            return None
        imp = spec.get("importance")
        key = _digest([built["key"], against["key"], spec, _file_digest(imp) if imp else None])
        path = self.out / "errors" / f"{row.slug}.json"
        cached = _read_json(path)
        if cached and cached.get("key") == key:
            return cached
        result = {"key": key, **weight_errors(against["path"], built["path"], spec.get("kinds") or ["mlp"], imp)}
        _write_json(path, result)
        return result

    # -- extras ------------------------------------------------------------------------------
    def sweep(self) -> Path | None:
        if not self.plan.sweep:
            return None
        args = substitute(self.plan.sweep, self.names)
        out = self.out / "sweep"
        key = _digest(args)
        if not _fresh(out / "stamp.json", key, out / "sweep_heatmap.png"):
            argv = ["sweep", *_flags(args), "--output_dir", str(out), "--overwrite", "true"]
            if self.partial:
                raise NotCached("sweep")
            self.say(f"sweep: lsmerge {' '.join(argv)}")
            seconds = run_lsmerge(argv, self.logs / "sweep.log")
            _write_json(out / "stamp.json", {"key": key, "seconds": seconds})
        dst = Path(self.plan.plots_dir) / "sweep_heatmap.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "sweep_heatmap.png", dst)
        return dst

    def inspect(self) -> list[Path]:
        """The kurtosis figure of each model, made under out_dir (a plot already in plots_dir, e.g. one
        committed with the repository, is not taken for this run's) and copied to plots_dir."""
        plots = []
        for spec in self.plan.inspect:
            model = Path(substitute(spec, self.names))
            stamp = self._inspect_stamp(model)
            made, dst = stamp.with_suffix(".png"), Path(self.plan.plots_dir) / f"kurtosis_{model.name}.png"
            if not (stamp.is_file() and made.is_file()):
                if self.partial:
                    continue
                made.parent.mkdir(parents=True, exist_ok=True)
                self.say(f"inspect {model}")
                seconds = run_lsmerge(["inspect", "--model", str(model), "--plot", str(made)], self.logs / f"inspect-{model.name}.log")
                _write_json(stamp, {"seconds": seconds})
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made, dst)
            plots.append(dst)
        return plots

    def judge(self, built: dict[str, dict]) -> list[dict]:
        """Generations of every judged row (cached) and one `lsmerge judge` per pair."""
        cfg = self.plan.judge
        if not cfg:
            return []
        cfg = substitute(cfg, self.names)
        gen = {"prompts": cfg["prompts"], "max_new_tokens": cfg.get("max_new_tokens", 48), "seed": self.plan.seed,
               **cfg.get("generate_args", {})}  # fmt: skip
        gen_flags = _flags(gen)
        rows_needed = sorted({n for pair in cfg["pairs"] for n in pair})
        files = {}
        for name in rows_needed:
            row, b = self.plan.row(name), built[name]
            path = self._generation(name)
            key = _digest([b["key"], gen, _file_digest(gen["prompts"])])
            if not _fresh(path.with_suffix(".json"), key, path):
                if b.get("hidden"):
                    h = b["hidden"]
                    model_args = ["--base", h["base"], "--fine_tuned", json.dumps([h["source"]]), "--operator", h["operator"],
                                  "--mix_layer", str(h["mix_layer"]), "--beta", str(h["beta"]), "--tokens", "all"]  # fmt: skip
                else:
                    model_args = ["--base", b["path"], "--operator", "null"]
                argv = ["generate", *model_args, *gen_flags, "--output", str(path), "--overwrite", "true"]
                if self.partial:
                    raise NotCached(name)
                self.say(f"generate {name}")
                seconds = run_lsmerge(argv, self.logs / f"generate-{row.slug}.log")
                _write_json(path.with_suffix(".json"), {"key": key, "seconds": seconds})
            files[name] = path
        results = []
        for a, b in cfg["pairs"]:
            out = self._verdict(a, b)
            judge_flags = _flags(cfg.get("judge_args", {}))
            key = _digest([_file_digest(files[a]), _file_digest(files[b]), cfg.get("model"), judge_flags])
            if not _fresh(out.with_suffix(".stamp.json"), key, out):
                if self.partial:
                    raise NotCached(f"judge {a} vs {b}")
                self.say(f"judge {a} vs {b}")
                seconds = run_lsmerge(["judge", "--responses_a", str(files[a]), "--responses_b", str(files[b]), "--judge", "local",
                             "--model", cfg["model"], *judge_flags, "--out", str(out)], self.logs / "judge.log")  # fmt: skip
                _write_json(out.with_suffix(".stamp.json"), {"key": key, "seconds": seconds})
            results.append({"a": a, "b": b, "summary": json.loads(out.read_text())["summary"], "judge": cfg["model"]})
        return results

    def harness(self, built: dict[str, dict]) -> list[dict]:
        """`lsmerge evaluate --tasks` on the plan's harness rows (`lsmerge.results.harness_rows`), cached."""
        if not self.plan.harness:
            return []
        return run_harness(self.plan.harness, built, self._harness_slugs(), self.eval_settings(), self.plan.seed, self.out,
                           run_lsmerge, self.say, self.partial, NotCached)

    def _harness_slugs(self) -> dict[str, str]:
        """Row name -> folder name of its harness result (a name in several sections: its last row, as `built`)."""
        return {r.name: r.slug for r in self.plan.rows}

    def _generation(self, name: str) -> Path:
        """A judged row's generations (JSONL); its stamp is the same path with .json."""
        return self.out / "generate" / f"{self.plan.row(name).slug}.jsonl"

    def _verdict(self, a: str, b: str) -> Path:
        """The judge's verdict on a pair (JSON); its stamp is the same path with .stamp.json."""
        return self.out / "judge" / f"{self.plan.row(a).slug}__vs__{self.plan.row(b).slug}.json"

    def _inspect_stamp(self, model: Path) -> Path:
        return self.out / "inspect" / f"{model.name}.json"

    def _extra_stamps(self) -> list[tuple[str, Path]]:
        """(label, stamp) of every sweep / inspect / generation / judge step of the plan."""
        stamps = [("sweep", self.out / "sweep" / "stamp.json")] if self.plan.sweep else []
        stamps += [(f"inspect {m}", self._inspect_stamp(Path(substitute(m, self.names)))) for m in self.plan.inspect]
        if self.plan.judge:
            pairs = self.plan.judge["pairs"]
            for name in sorted({n for pair in pairs for n in pair}):
                stamps.append((f"generate {name}", self._generation(name).with_suffix(".json")))
            for a, b in pairs:
                stamps.append((f"judge {a} vs {b}", self._verdict(a, b).with_suffix(".stamp.json")))
        slugs = self._harness_slugs()
        for name in (self.plan.harness or {}).get("rows", []):
            stamps.append((f"harness {name}", self.out / "harness" / f"{slugs[name]}.stamp.json"))
        return stamps

    # -- all ---------------------------------------------------------------------------------
    def run(self) -> dict:
        from lsmerge.results.report import write_report

        if not self.partial:
            self.prepare()
            self.check_corpora()
            if self.plan.harness:
                check_tasks(self.plan.harness, self.eval_settings())  # a misspelt task fails now, not after the rows
            self.train_vaes()
        records, built, missing = [], {}, []
        for row in self.plan.rows:
            try:
                b = self.build(row)
                s = self.score(row, b)
            except NotCached:
                missing.append(row.name)
                continue
            built[row.name] = b
            records.append({"row": row, "built": b, "scores": s, "error": self.weight_error(row, b, built)})
            ppl = ", ".join(f"{c} {v['perplexity']:.4g}" for c, v in s["corpora"].items())
            self.say(f"  {row.group} / {row.name}: {ppl}")
        extras = {"sweep": self._extra(self.sweep), "kurtosis": self.inspect(), "judge": self._extra(lambda: self.judge(built))}
        extras["harness"] = self._extra(lambda: self.harness(built))
        extras["costs"] = self.costs(records)
        if missing:
            self.say(f"partial: {len(missing)} of {len(self.plan.rows)} rows not cached, left out of the table")
        return write_report(self.plan, records, extras, {**self.eval_settings(), "seed": self.plan.seed}, missing=missing)

    def _extra(self, step):
        """A sweep / judge step; in a partial run, None when it is not cached (KeyError: a judged row is missing)."""
        try:
            return step()
        except (NotCached, KeyError):
            if not self.partial:
                raise
            return None


def _checkpoint_key(path: str, row: Row) -> str:
    """Digest of a checkpoint folder's identity: its path and its weight files' sizes and times."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise LsMergeError(f"row {row.name!r}: {p} is not a checkpoint folder (no config.json).")
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.glob("*.safetensors"))
    return _digest([str(p), files])
