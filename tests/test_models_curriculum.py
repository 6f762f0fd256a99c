"""`lsmerge.models.curriculum.BetaCurriculum`: the beta schedule and its plateau switch, in training and across a resume."""

from __future__ import annotations

import lightning as L
import pytest

from lsmerge.models.curriculum import BetaCurriculum
from tests.vae_helpers import cpu_trainer, tiny_datamodule, tiny_weight_vae


def test_curriculum_schedule_and_plateau():
    c = BetaCurriculum(ae_steps=10, beta_max=0.5, beta_warmup_steps=4)
    assert [c.beta(s) for s in (0, 9)] == [0.0, 0.0] and c.stage(9) == 1 and c.stage(10) == 2
    assert [c.beta(s) for s in (10, 11, 13, 20)] == [0.125, 0.25, 0.5, 0.5]
    p = BetaCurriculum(ae_steps=100, beta_max=1.0, beta_warmup_steps=0, plateau_patience=3, plateau_min_delta=0.01, ema=0.0)
    for step, loss in enumerate([1.0, 0.5, 0.5, 0.5, 0.5]):
        p.update(step, loss)
    assert p.switch_step == 5 and p.stage(4) == 1 and p.beta(5) == 1.0
    q = BetaCurriculum(ae_steps=100, beta_max=1.0, beta_warmup_steps=0, plateau_patience=3)
    q.load_state_dict(p.state_dict())
    assert q.switch_step == 5 and q.beta(5) == p.beta(5)


def test_training_switches_and_resume_continues(vae_llama, tmp_path):
    dm = tiny_datamodule(vae_llama, tmp_path)
    model = tiny_weight_vae(dm, ae_steps=6, beta_max=0.1, beta_warmup_steps=10, plateau_patience=2, plateau_min_delta=0.5)
    trainer = cpu_trainer(tmp_path, max_steps=8, limit_val_batches=1)
    trainer.fit(model, dm)
    ckpt = str(tmp_path / "a.ckpt")
    trainer.save_checkpoint(ckpt)
    switch = model.curriculum.switch_step
    assert switch is not None and switch <= 6  # a plateau can end stage 1 before ae_steps
    assert model.curriculum.stage(7) == 2
    resumed = tiny_weight_vae(dm, ae_steps=6, beta_max=0.1, beta_warmup_steps=10, plateau_patience=2, plateau_min_delta=0.5)
    t2 = cpu_trainer(tmp_path, max_steps=12, limit_val_batches=1)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, pl_module.curriculum.beta(trainer.global_step)))

    t2.callbacks.append(Spy())
    t2.fit(resumed, dm, ckpt_path=ckpt)
    assert seen[0][0] == 8 and t2.global_step == 12
    assert resumed.curriculum.switch_step == switch
    assert seen[0][1] == pytest.approx(0.1 * min(1, (8 - switch + 1) / 10))
