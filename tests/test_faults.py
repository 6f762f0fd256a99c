"""Faults at the command boundary (`lsmerge.cli.main`), across the commands that write.

An output place that cannot be written, a disk that fills up mid-write, and SIGTERM / SIGINT /
SIGKILL sent to real `lsmerge` processes while they write: each ends in one line on stderr
(no traceback) and a conventional exit status, with no temporary folder, nothing at the target
and no parent folder left behind; after SIGKILL the next identical run cleans up and writes
the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lsmerge.cli import main

REPO = Path(__file__).resolve().parents[1]
TMP_MARK = ".lsmerge-tmp-"


# -- the commands that write, with their output option ----------------------------------------
def _writing_commands(w, vae_ckpt: Path, vae_model: str, prompts: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (argv without the output, the output option); the output is a file for some."""
    models = f"[{w.e1},{w.e2}]"
    return {
        "merge-weights": (["merge-weights", "--models", models, "--progress", "false", "--out"], "folder"),
        "merge": (["merge", "--models", models, "--codec", "pca", "--progress", "false", "--out"], "folder"),
        "merge --save_codec": (["merge", "--models", models, "--codec", "pca", "--progress", "false",
                                "--out", "{ok}/merged", "--save_codec"], "folder"),  # fmt: skip
        "export": (["export", "--vae", str(vae_ckpt), "--model", vae_model, "--out"], "folder"),
        "inspect --plot": (["inspect", "--model", str(w.e1), "--plot"], "kurtosis.png"),
        "evaluate --out": (["evaluate", "--models", f"[{w.e1}]", "--texts", f"[{w.text}]", "--max_tokens", "32",
                            "--out"], "ppl"),  # fmt: skip
        "generate --output": (["generate", "--base", str(w.base), "--fine_tuned", f"[{w.e1}]", "--prompts", str(prompts),
                               "--chat_template", "false", "--mix_layer", "1", "--max_new_tokens", "2", "--output"],
                              "gen.jsonl"),  # fmt: skip
        "steer --output": (["steer", "--base", str(w.base), "--fine_tuned", str(w.e1), "--prompts", str(prompts),
                            "--chat_template", "false", "--layers", "[1]", "--output"], "deltas.safetensors"),  # fmt: skip
    }


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = Path(tmp_path_factory.mktemp("prompts")) / "prompts.txt"
    path.write_text("alpha beta gamma\ndelta\n")
    return path


def _argv(spec: tuple[list[str], str], out: Path, ok: Path) -> list[str]:
    argv, kind = spec
    target = out if kind == "folder" else out / kind
    return [a.replace("{ok}", str(ok)) for a in argv] + [str(target)]


def _blocked_places(tmp_path: Path) -> list[tuple[str, Path]]:
    """Places no user can write below: a path through a regular file, /proc, and (when not root)
    a read-only folder."""
    places = []
    afile = tmp_path / "file.txt"
    afile.write_text("not a folder\n")
    places.append(("under-a-file", afile))
    if Path("/proc/self").exists():
        places.append(("proc", Path("/proc/lsmerge-test")))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):  # root writes anyway: covered by the two above
        places.append(("read-only-folder", locked))
    return places


def _one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("lsmerge ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lsmerge {command}: error: "), err
    return lines[0]


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("name", ["merge-weights", "merge", "merge --save_codec", "export", "inspect --plot",
                                  "evaluate --out", "generate --output", "steer --output"])  # fmt: skip
def test_unwritable_output_place_is_one_line(name, tiny_world, vae_fit_run, vae_llama, prompts, tmp_path, capsys):
    spec = _writing_commands(tiny_world, vae_fit_run / "last.ckpt", vae_llama, prompts)[name]
    command = spec[0][0]
    ok = tmp_path / "ok"
    ok.mkdir()
    for label, place in _blocked_places(tmp_path):
        before = _tree(tmp_path)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(_argv(spec, place / "new" / "out", ok))
        assert e.value.code == 1, label
        line = _one_error_line(capsys.readouterr().err, command)
        assert str(place) in line, (label, line)
        if name != "merge --save_codec":  # a codec folder that cannot be written stops the merge
            assert _tree(tmp_path) == before, label
        else:
            assert not (ok / "merged").exists() and not any(ok.iterdir()), label
    for p in tmp_path.rglob("*"):
        if p.is_dir():
            p.chmod(0o700)


# -- a full disk ---------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, target, attr: str, n: int = 1):
    """Make `target.attr` raise ENOSPC (no path, as a write() does) from its `n`-th call on,
    after writing part of its data."""
    real = getattr(target, attr)
    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, full)


@pytest.mark.parametrize("name", ["merge-weights", "merge", "inspect --plot", "steer --output"])
def test_full_disk_mid_write_is_one_line_and_leaves_nothing(name, tiny_world, prompts, tmp_path, monkeypatch, capsys):
    from lsmerge.io import writer

    spec = _writing_commands(tiny_world, Path("unused"), "unused", prompts)[name]
    command = spec[0][0]
    if spec[1] == "folder":
        _fill_disk_after(monkeypatch, writer._Shard, "add", n=5)  # a few tensors are on disk by then
    elif name == "steer --output":
        _fill_disk_after(monkeypatch, Path, "write_bytes")
    else:
        from matplotlib.figure import Figure

        real = Figure.savefig

        def savefig_then_full(self, fname, *args, **kwargs):
            real(self, fname, *args, **kwargs)  # the file is there, in full or in part
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(Figure, "savefig", savefig_then_full)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(SystemExit) as e:
        main(_argv(spec, out, tmp_path))
    assert e.value.code == 1
    line = _one_error_line(capsys.readouterr().err, command)
    assert "No space left on device" in line and "free disk space" in line, line
    assert str(out) in line, line  # the path the user chose, not a temporary one
    assert not (tmp_path / "new").exists(), _tree(tmp_path)  # no target, no temporary, no empty parents


# -- signals sent to real processes ---------------------------------------------------------------
# Each `CheckpointWriter.add` sleeps 30 ms in these processes so that the write lasts about half
# a second on tiny models: the signal lands while the temporary folder is being filled, however
# slow or fast the machine. Everything else is the ordinary `lsmerge` entry point.
SLOW_WRITER = """
import sys, time
import lsmerge.io.writer as w
_add = w.CheckpointWriter.add
def _slow_add(self, name, tensor):
    _add(self, name, tensor)
    time.sleep(0.03)
w.CheckpointWriter.add = _slow_add
from lsmerge.cli import console
console(sys.argv[1:])
"""


# `lsmerge evaluate` whose scoring of each (model, text) sleeps 100 ms first: a command that computes
# for seconds before it writes anything, however fast the machine (a plain run of 100 tiny models
# could end before the test saw its first progress line and sent the signal).
SLOW_SCORER = """
import sys, time
import lsmerge.evaluate.perplexity_command as pc
_nlls = pc.window_nlls
def _slow_nlls(*a, **k):
    time.sleep(0.1)
    return _nlls(*a, **k)
pc.window_nlls = _slow_nlls
from lsmerge.cli import console
console(sys.argv[1:])
"""


def _start(argv: list[str], cwd: Path, slow: bool | str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    harness = SLOW_SCORER if slow == "scorer" else SLOW_WRITER if slow else None
    cmd = [sys.executable, "-c", harness, *argv] if harness else [sys.executable, "-m", "lsmerge.cli", *argv]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _temp_folders(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if TMP_MARK in p.name] if parent.is_dir() else []


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("name", ["merge-weights", "merge", "export"])
def test_signals_while_writing(name, tiny_world, vae_fit_run, vae_llama, prompts, tmp_path, monkeypatch):
    argv = _writing_commands(tiny_world, vae_fit_run / "last.ckpt", vae_llama, prompts)[name][0]
    argv = [*argv, "new/out"]  # relative: every run records the same --out in its provenance
    runs = {}
    for label in ("SIGTERM", "SIGINT", "SIGKILL"):
        (tmp_path / label).mkdir()
        runs[label] = _start(argv, tmp_path / label, slow=True)
    pending = {label: getattr(signal, label) for label in runs}
    deadline = time.monotonic() + 180
    while pending and time.monotonic() < deadline:
        for label in list(pending):
            if runs[label].poll() is not None:
                pytest.fail(f"{label} run ended before its write began: {runs[label].communicate()[1][-2000:]}")
            if _temp_folders(tmp_path / label / "new"):
                runs[label].send_signal(pending.pop(label))
        time.sleep(0.002)
    assert not pending, f"no temporary folder appeared for {sorted(pending)}"
    results = {label: (p.wait(timeout=120), p.communicate()[1]) for label, p in runs.items()}

    for label, status in (("SIGTERM", 143), ("SIGINT", 130)):
        rc, err = results[label]
        assert rc == status and "Traceback" not in err, (label, rc, err[-3000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"lsmerge {argv[0]}: interrupted ({label}); nothing was written to "), last
        assert last.endswith(str(tmp_path / label / "new" / "out")), last
        assert not (tmp_path / label / "new").exists(), _tree(tmp_path / label)  # no temp, no target, no parent

    rc, _ = results["SIGKILL"]
    assert rc == -signal.SIGKILL
    killed = tmp_path / "SIGKILL" / "new"
    assert _temp_folders(killed) and not (killed / "out").exists()  # SIGKILL cannot be caught
    # the next identical run (here in this process) removes the dead run's temporary folder and
    # writes what an uninterrupted run writes, byte for byte
    monkeypatch.chdir(tmp_path / "SIGKILL")
    main(argv)
    assert not _temp_folders(killed)
    (tmp_path / "reference").mkdir()
    monkeypatch.chdir(tmp_path / "reference")
    main(argv)
    assert _files(killed / "out") == _files(tmp_path / "reference" / "new" / "out")


def test_sigterm_before_any_output_is_a_generic_line(tiny_world, tmp_path):
    """A signal while the command computes (no write begun) still ends in one line and 143."""
    proc = _start(["evaluate", "--models", json.dumps([str(tiny_world.e1)] * 100), "--texts", f"[{tiny_world.text}]",
                   "--out", "new/ppl"], tmp_path, slow="scorer")  # fmt: skip
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while "Loading weights" not in "".join(seen) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = "".join(seen)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("lsmerge evaluate: interrupted (SIGTERM)")
    assert not (tmp_path / "new").exists()


def test_error_line_starts_its_own_line_after_an_open_progress_bar(capsys, tmp_path):
    """An error while a progress bar is mid-line (transformers' "Loading weights") still ends stderr
    with the command's own line, not glued to the bar (seen in CI when SIGTERM met the loading bar)."""
    import tqdm

    bar = tqdm.tqdm(total=3, desc="Loading weights", file=sys.stderr)
    bar.update(1)
    try:
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--models", json.dumps([str(tmp_path / "missing")]), "--texts", "[x]", "--out",
                  str(tmp_path / "ppl")])  # fmt: skip
        err = capsys.readouterr().err
    finally:
        bar.close()
    assert exc.value.code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("lsmerge evaluate: error:"), last
