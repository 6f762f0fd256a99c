"""The two-stage beta curriculum of the weight VAE (LS-Merge, "avoid early collapse").

Stage 1 is a plain autoencoder (beta = 0, the encoder's mean is used as the code); it ends
after `ae_steps` optimizer steps, or earlier when the smoothed training loss has not improved
by a relative `plateau_min_delta` for `plateau_patience` steps (0 turns plateau detection off).
Stage 2 warms beta up linearly to `beta_max`:

    beta(g) = 0                                                   g < s   (stage 1)
    beta(g) = beta_max * min(1, (g - s + 1) / beta_warmup_steps)  g >= s  (stage 2)

with g the 0-based global step and s the switch step (`ae_steps`, or one past the step at
which the plateau was detected). The schedule is a small object held by `WeightVAE`; its
state (switch step, plateau tracker) goes into every Lightning checkpoint through
`state_dict` / `load_state_dict`, so a resumed run continues in the same stage with the
same beta.
"""

from __future__ import annotations

import math


class BetaCurriculum:
    """Beta schedule; see the module docstring for the formula.

    Args:
        ae_steps: steps of stage 1 at most (0 starts in stage 2).
        beta_max: final KL weight.
        beta_warmup_steps: linear warm-up length of stage 2 (0 jumps to beta_max).
        plateau_patience: end stage 1 early after this many steps without improvement (0 = off).
        plateau_min_delta: relative improvement of the smoothed loss that counts.
        ema: smoothing factor of the training loss for plateau detection.
    """

    def __init__(
        self,
        ae_steps: int = 500,
        beta_max: float = 1e-3,
        beta_warmup_steps: int = 500,
        plateau_patience: int = 0,
        plateau_min_delta: float = 0.01,
        ema: float = 0.9,
    ):
        if ae_steps < 0 or beta_warmup_steps < 0 or plateau_patience < 0:
            from lsmerge.errors import LsMergeError

            raise LsMergeError("ae_steps, beta_warmup_steps and plateau_patience must be >= 0.")
        if beta_max < 0:
            from lsmerge.errors import LsMergeError

            raise LsMergeError(f"beta_max must be >= 0, got {beta_max}.")
        self.ae_steps = ae_steps
        self.beta_max = beta_max
        self.beta_warmup_steps = beta_warmup_steps
        self.plateau_patience = plateau_patience
        self.plateau_min_delta = plateau_min_delta
        self.ema = ema
        self.switch_step: int | None = None if ae_steps > 0 else 0
        self.smoothed: float | None = None
        self.best = math.inf
        self.since_best = 0

    def _switch_at(self) -> int:
        return self.ae_steps if self.switch_step is None else min(self.switch_step, self.ae_steps)

    def stage(self, step: int) -> int:
        """1 (autoencoder) or 2 (KL on) at global step `step`."""
        return 2 if step >= self._switch_at() else 1

    def beta(self, step: int) -> float:
        """The KL weight used by the training step with 0-based global step `step`."""
        s = self._switch_at()
        if step < s:
            return 0.0
        if self.beta_warmup_steps == 0:
            return float(self.beta_max)
        return float(self.beta_max * min(1.0, (step - s + 1) / self.beta_warmup_steps))

    def update(self, step: int, loss: float) -> None:
        """Feed the training loss of step `step` (plateau detection in stage 1)."""
        if self.stage(step) == 2 or self.plateau_patience == 0 or not math.isfinite(loss):
            return
        self.smoothed = loss if self.smoothed is None else self.ema * self.smoothed + (1 - self.ema) * loss
        if self.smoothed < self.best * (1 - self.plateau_min_delta):
            self.best, self.since_best = self.smoothed, 0
        else:
            self.since_best += 1
            if self.since_best >= self.plateau_patience:
                self.switch_step = step + 1

    def state_dict(self) -> dict:
        return {
            "switch_step": self.switch_step,
            "smoothed": self.smoothed,
            "best": self.best,
            "since_best": self.since_best,
        }

    def load_state_dict(self, state: dict) -> None:
        self.switch_step = state["switch_step"]
        self.smoothed = state["smoothed"]
        self.best = state["best"]
        self.since_best = state["since_best"]

    def __repr__(self) -> str:
        return (
            f"BetaCurriculum(ae_steps={self.ae_steps}, beta_max={self.beta_max}, "
            f"beta_warmup_steps={self.beta_warmup_steps}, plateau_patience={self.plateau_patience}, "
            f"switch_step={self.switch_step})"
        )
