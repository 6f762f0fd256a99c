"""The shipped recipes under configs/ chain: every YAML passes `--print_config` with its command,
the configs that need the experts say how to make them, the generate configs share one prompt
file and write the response sets configs/judge/local.yaml reads, and the hetero recipe's default is
the working route."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lsmerge.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMMAND_OF = {"generate": "generate", "judge": "judge", "merge": "merge", "merge_weights": "merge-weights",
              "sweep": "sweep", "vae": "fit"}
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.y*ml") if p.parent.name != "results")


def test_every_config_folder_has_a_command():
    assert CONFIGS
    assert {p.parent.name for p in CONFIGS} <= set(COMMAND_OF)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_prints_with_its_command(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        main([COMMAND_OF[config.parent.name], "--config", str(config.relative_to(ROOT)), "--print_config"])
    except SystemExit as e:  # jsonargparse exits after printing; a mergekit recipe's plan just returns
        assert e.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)


def test_mergekit_print_config_shows_what_runs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    main(["merge-weights", "--mergekit_config", "configs/merge_weights/mergekit_slerp.yml", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == "slerp"
    assert printed["models"] == ["checkpoints/base/smollm2-135m-instruct", "checkpoints/base/smollm2-135m-expert"]
    assert printed["base_model"] == "checkpoints/base/smollm2-135m-instruct"
    assert printed["parameters"]["t"][-1] == {"value": 0.5}
    assert printed["mergekit_config"] == "configs/merge_weights/mergekit_slerp.yml"


@pytest.mark.parametrize("config", [p for p in CONFIGS if "smollm2-135m-expert" in p.read_text()],
                         ids=lambda p: p.name)
def test_configs_that_need_experts_say_how_to_make_them(config):
    assert "scripts/make_experts.py" in "".join(config.read_text().splitlines(keepends=True)[:3])


def test_generate_configs_share_prompts_and_feed_the_judge():
    gens = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "configs/generate").glob("*.yaml")}
    assert {g["prompts"] for g in gens.values()} == {"configs/generate/prompts.txt"}
    assert (ROOT / "configs/generate/prompts.txt").is_file()
    judge = yaml.safe_load((ROOT / "configs/judge/local.yaml").read_text())
    outputs = {g["output"] for g in gens.values()}
    assert {judge["responses_a"], judge["responses_b"]} <= outputs


def test_hetero_recipe_defaults_to_the_working_route():
    cfg = yaml.safe_load((ROOT / "configs/merge/smollm2_to_gemma3_hetero.yaml").read_text())
    assert cfg["delta"] == "latent"
    assert "--delta none" in (ROOT / "configs/merge/smollm2_to_gemma3_hetero.yaml").read_text()
