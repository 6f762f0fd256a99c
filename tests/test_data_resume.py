"""`lsmerge.data.resume`: a fit stopped after a checkpoint and resumed from it ends with the weights
of one uninterrupted run, bit for bit (mid-epoch, at an epoch boundary, during and right after a
validation); the sampler and the random-number states it relies on."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lsmerge.data.resume import ResumableSampler, restore_rng_states, rng_states
from tests.vae_helpers import cpu_trainer, tiny_datamodule, tiny_weight_vae

MAX_STEPS = 10  # 4 batches per epoch: epochs end after steps 4 and 8; validation after steps 3, 6, 9


class Kill(Exception):
    pass


class KillAt(Callback):
    """Raise (like a killed process) at the first training batch after global step `step`, or
    inside the validation that runs at that step (`during_validation`)."""

    def __init__(self, step: int, during_validation: bool = False):
        self.step, self.during_validation = step, during_validation

    def on_train_batch_start(self, trainer, *args):
        if not self.during_validation and trainer.global_step == self.step:
            raise Kill

    def on_validation_batch_start(self, trainer, *args):
        if self.during_validation and trainer.global_step == self.step:
            raise Kill


def _fit(vae_llama, tmp_path, callbacks, ckpt_path=None):
    L.seed_everything(0, verbose=False)
    dm = tiny_datamodule(vae_llama, tmp_path, batch_size=16)
    model = tiny_weight_vae(dm, ae_steps=2, beta_max=1e-3, beta_warmup_steps=3)  # beta > 0: the fit draws noise
    trainer = cpu_trainer(tmp_path, max_steps=MAX_STEPS, val_check_interval=3, check_val_every_n_epoch=None,
                          limit_val_batches=2, callbacks=callbacks, enable_checkpointing=True)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    assert trainer.global_step == MAX_STEPS and len(trainer.train_dataloader) == 4
    return model


@pytest.fixture(scope="module")
def straight(vae_llama, tmp_path_factory):
    return _fit(vae_llama, tmp_path_factory.mktemp("straight"), [])


@pytest.mark.parametrize(
    "stop, every_step, during_validation",
    [(5, True, False),  # mid-epoch (epoch 1, after its first batch)
     (8, True, False),  # at an epoch boundary (after the last batch of epoch 1)
     (6, True, True),  # during the validation at step 6 (checkpoint from the training batch before it)
     (6, False, False)],  # right after the validation at step 6 (checkpoint written when it ended)
    ids=["mid_epoch", "epoch_boundary", "during_validation", "after_validation"],
)
def test_resume_is_bit_identical(vae_llama, tmp_path, straight, stop, every_step, during_validation):
    ckpts = tmp_path / "ckpt"
    save = ModelCheckpoint(dirpath=ckpts, save_last=True, save_top_k=-1, filename="step{step}",
                           every_n_train_steps=1 if every_step else None)
    with pytest.raises(Kill):
        _fit(vae_llama, tmp_path, [save, KillAt(stop, during_validation)])
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == stop
    resumed = _fit(vae_llama, tmp_path, [ModelCheckpoint(dirpath=ckpts, save_last=True)], ckpt_path=ckpts / "last.ckpt")
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_sampler_continues_the_saved_permutation():
    torch.manual_seed(3)
    s = ResumableSampler(10)
    order = list(s)
    state = s.state_dict(consumed=4)
    t = ResumableSampler(10)
    t.load_state_dict(state)
    before = torch.get_rng_state()
    assert list(t) == order[4:] and torch.equal(torch.get_rng_state(), before)  # no draw when resuming
    t.load_state_dict(s.state_dict(consumed=10))  # a finished epoch: the next one is a fresh draw
    assert sorted(t) == list(range(10)) and not torch.equal(torch.get_rng_state(), before)


def test_sampler_keeps_the_random_sampler_order():
    """With the DataLoader's former base-seed draw, the order equals RandomSampler's in a loader without generator."""
    from torch.utils.data import DataLoader

    torch.manual_seed(5)
    old = [int(i) for b in DataLoader(range(37), batch_size=8, shuffle=True) for i in b]
    torch.manual_seed(5)
    assert list(ResumableSampler(37)) == old


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": rng_states()}, tmp_path / "s.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_states(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
