"""BaselineMerges: inside a real fit (TensorBoard scalars, every n validations), exact identities,
option errors before training, the shipped recipe."""

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_tiny_llama as make_small
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lsmerge.callbacks import BaselineMerges, HiddenBaseline, WeightBaseline
from lsmerge.data.weight_datamodule import WeightChunkDataModule
from lsmerge.io.tiny import make_tiny_llama
from lsmerge.errors import LsMergeError
from lsmerge.models.weight_vae import WeightVAE

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TEXT = (
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
    "rough winds do shake the darling buds of May, and summer's lease hath all too short a date.\n"
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(base, expert, text): two tiny random Llamas (seeds 0 and 1, no tokenizer) and an ASCII text."""
    root = tmp_path_factory.mktemp("baselines")
    text = root / "heldout.txt"
    text.write_text(TEXT)
    return str(make_tiny_llama(root / "base")), str(make_tiny_llama(root / "expert", seed=1)), str(text)


def _callback(pair, **kw):
    base, expert, text = pair
    args = dict(base=base, expert=expert, text=text, tokenizer="bytes", max_tokens=96, max_length=48, stride=24,
                hidden=[HiddenBaseline("lerp", 1, 0.5)], latent_lambda=0.5)  # fmt: skip
    args.update(kw)
    return BaselineMerges(**args)


def _vae(base, tmp_path):
    dm = WeightChunkDataModule(checkpoints=[base], kinds=["mlp_gate"], layers=[0], chunk_size=16, tokens_per_sample=8,
                               batch_size=16, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    model = WeightVAE(chunk_size=dm.chunk_size, tokens_per_sample=dm.tokens_per_sample, num_layers=dm.num_layers,
                      num_sources=dm.num_sources, tensors=dm.tensors, family=dm.family, layout=dm.layout,
                      normalization=dm.normalization, latent_dim=16, d_model=32, n_heads=4, encoder_layers=1,
                      decoder_layers=1, ae_steps=1000, beta_max=0.0, lr=3e-3, lr_warmup_steps=2)  # fmt: skip
    return dm, model


def _trainer(tmp_path, **kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)  # fmt: skip
    args.update(kw)
    return L.Trainer(**args)


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc


def test_fit_logs_every_n_validations_to_tensorboard(pair, tmp_path):
    dm, model = _vae(pair[0], tmp_path)
    cb = _callback(pair, every_n_validations=2, hidden=[HiddenBaseline("lerp", 1, 0.5), HiddenBaseline("slerp", 2, 0.5)])
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = _trainer(tmp_path, logger=logger, callbacks=[cb], max_steps=4, val_check_interval=1,
                       check_val_every_n_epoch=None, limit_val_batches=1, num_sanity_val_steps=1)  # fmt: skip
    trainer.fit(model, dm)
    assert cb.validations == 4  # the sanity check is not counted
    scalars, acc = _scalars(logger.log_dir)
    rows = ["base", "expert", "weight_lerp_t0.5", "weight_slerp_t0.5", "weight_ties_d0.5", "hidden_lerp_L1_b0.5",
            "hidden_slerp_L2_b0.5", "latent_lerp_l0.5"]  # fmt: skip
    for row in rows:
        points = scalars[f"baselines/ppl/{row}"]
        assert [s for s, _ in points] == [2, 4], row  # validations 2 and 4 of 4
        assert all(v > 1 and torch.isfinite(torch.tensor(v)) for _, v in points), (row, points)
    assert scalars["baselines/ppl/base"][0][1] == pytest.approx(cb.last["base"])
    table = acc.Tensors("baselines/table/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert all(f"| {row} |" in table for row in rows)
    assert model.training and all(m.training for m in model.modules())


def test_identities_and_modes(pair, tmp_path):
    _, model = _vae(pair[0], tmp_path)
    weight = [WeightBaseline("lerp", t=0.0), WeightBaseline("lerp", t=1.0), WeightBaseline("ties", density=1.0)]
    hidden = [HiddenBaseline("lerp", 1, 0.0), HiddenBaseline("slerp", 0, 0.0), HiddenBaseline("lerp", 2, 0.0)]
    cb = _callback(pair, weight=weight, hidden=hidden, latent_lambda=0.25)
    cb.setup(_trainer(tmp_path), model, "fit")
    model.train()
    model.enc_in.eval()  # a mixed state must come back as it was
    rows = cb.evaluate(model)
    base, expert = rows["base"], rows["expert"]
    assert base != expert
    assert rows["weight_lerp_t0"] == base and rows["weight_lerp_t1"] == expert  # bit for bit
    assert rows["hidden_lerp_L1_b0"] == base and rows["hidden_slerp_L0_b0"] == base and rows["hidden_lerp_L2_b0"] == base
    assert rows["weight_ties_d1"] == pytest.approx(expert, rel=1e-5)  # base + (expert - base)
    assert torch.isfinite(torch.tensor(rows["latent_lerp_l0.25"]))
    assert not model.enc_in.training and all(m.training for n, m in model.named_modules() if n != "enc_in")
    assert cb.evaluate(model) == rows  # the pair's rows are fixed; an unchanged VAE gives the same latent row


def test_tokenizer_folder(pair, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path / "tok")
    cb = _callback(pair, tokenizer=str(tmp_path / "tok"), weight=[], hidden=[], latent_lambda=None, device="cpu")
    cb.setup(_trainer(tmp_path), None, "fit")  # no VAE needed without a latent row
    rows = cb.evaluate(None)
    assert list(rows) == ["base", "expert"] and all(1 < v < float("inf") for v in rows.values())
    assert cb.bench.pad_id == 1 and cb.bench.ids.numel() > len(TEXT.split())  # words and punctuation, not bytes


def test_bad_options_raise_before_training(pair, tmp_path):
    base, expert, text = pair
    other_family = tmp_path / "mistral"
    shutil.copytree(expert, other_family)
    cfg = json.loads((other_family / "config.json").read_text())
    (other_family / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
    make_small(tmp_path / "smaller", hidden=32)
    cases = [
        (dict(hidden=[HiddenBaseline("lerp", 3, 0.5)]), "has 2 decoder layers, so mix_layer must be an integer in 0..2"),
        (dict(hidden=[HiddenBaseline("mean", 1, 0.5)]), "use one of lerp, slerp"),
        (dict(hidden=[HiddenBaseline("lerp", 1, 1.5)]), "beta=1.5 is out of range"),
        (dict(base=str(tmp_path / "missing")), "unknown model .*missing.*no such folder"),
        (dict(expert=str(other_family)), "different architectures: .* is 'llama' but .* is 'mistral'"),
        (dict(expert=str(tmp_path / "smaller")), "has shape .* give an expert fine-tuned from the base"),
        (dict(weight=[WeightBaseline("dare")]), "use one of lerp, slerp, ties"),
        (dict(weight=[WeightBaseline("ties", density=0.0)]), r"density=0.0 must be a number in \(0, 1\]"),
        (dict(weight=[WeightBaseline("lerp", t=1.5)]), "t=1.5 must be a number in"),
        (dict(weight=[{"method": "lerp"}, {"method": "lerp", "density": 0.1}]), "configured twice"),
        (dict(every_n_validations=0), "every_n_validations=0"),
        (dict(latent_lambda=2.0), "latent_lambda must be in"),
        (dict(text=str(tmp_path / "nothing.txt")), "held-out text"),
        (dict(tokenizer=None), "no tokenizer files"),
        (dict(stride=100), "stride=100"),
    ]
    for kw, match in cases:
        with pytest.raises(LsMergeError, match=match):
            _callback(pair, **kw)

    # a VAE trained on other tensors, or a text beyond the vocabulary: refused in setup, before any step
    dm, model = _vae(str(tmp_path / "smaller"), tmp_path)
    trainer = _trainer(tmp_path, callbacks=[_callback(pair)], max_steps=2)
    with pytest.raises(LsMergeError, match="the VAE was not trained on this model's tensors"):
        trainer.fit(model, dm)
    assert trainer.global_step == 0
    accented = tmp_path / "accented.txt"
    accented.write_text("caf\u00e9 " * 20)
    dm, model = _vae(base, tmp_path)
    trainer = _trainer(tmp_path, callbacks=[_callback(pair, text=str(accented))], max_steps=2)
    with pytest.raises(LsMergeError, match="vocabulary has 128 entries"):
        trainer.fit(model, dm)
    assert trainer.global_step == 0


def test_shipped_recipe_runs(tmp_path, monkeypatch):
    from lsmerge.cli import main

    monkeypatch.chdir(tmp_path)  # the recipe creates its tiny models under ./checkpoints
    main(["fit", "--config", str(REPO / "configs/vae/tiny_baselines.yaml"), "--trainer.max_steps=2",
          "--trainer.val_check_interval=2", "--trainer.callbacks.init_args.max_tokens=128",
          f"--trainer.callbacks.init_args.text={REPO / 'configs/vae/tiny_heldout.txt'}"])  # fmt: skip
    scalars, _ = _scalars(tmp_path / "checkpoints/vae/tb/tiny_baselines/version_0")
    assert {t for t in scalars if t.startswith("baselines/ppl/")} == {
        f"baselines/ppl/{r}" for r in ["base", "expert", "weight_lerp_t0.5", "weight_slerp_t0.5", "weight_ties_d0.5",
                                       "hidden_lerp_L1_b0.5", "hidden_slerp_L1_b0.5", "latent_lerp_l0.5"]
    }  # fmt: skip
    assert scalars["baselines/ppl/base"][0][0] == 2
