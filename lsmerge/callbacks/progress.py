"""Progress lines for `lsmerge fit` when Lightning's progress bar is off.

`ProgressLines` prints one line to stderr (global rank 0 only) when training starts, then at most
every `every_s` seconds (step, of max_steps, last logged loss, elapsed time), and once at the
end; it stays silent while the trainer shows its own progress bar or when `enabled` is False
(`lsmerge fit --progress false`).
"""

from __future__ import annotations

import sys
import time

import lightning as L


class ProgressLines(L.Callback):
    """A line on stderr at most every `every_s` seconds of training (see module doc)."""

    def __init__(self, every_s: float = 10.0, enabled: bool = True):
        self.every_s = every_s
        self.enabled = enabled
        self._start = self._last = 0.0

    def _active(self, trainer: L.Trainer) -> bool:
        return self.enabled and trainer.is_global_zero and trainer.progress_bar_callback is None

    @staticmethod
    def _say(line: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"fit: {line}", file=sys.stderr)

    def _status(self, trainer: L.Trainer) -> str:
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            loss = next((v for k, v in trainer.callback_metrics.items() if k.endswith("loss")), None)
        shown = f"  loss {float(loss):.4g}" if loss is not None else ""
        return f"step {trainer.global_step}{total}{shown}  {time.monotonic() - self._start:.0f} s"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        if self._active(trainer):
            self._say(f"training from step {trainer.global_step}; a line every {self.every_s:g} s")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._active(trainer) and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._say(self._status(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._active(trainer):
            self._say(f"done: {self._status(trainer)}")
