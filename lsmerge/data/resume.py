"""What a resumed fit needs to continue bit for bit: the training sampler's position and the
random-number states, both as plain tensors / lists / numbers (a weights-only load takes them).

`ResumableSampler` shuffles like `torch.utils.data.RandomSampler` without a generator: when an
epoch starts it draws the epoch's seed from torch's global RNG and yields
``randperm(n, Generator(seed))``. Its state is that seed and how many samples of the epoch were
trained on; loaded, the next iteration yields the rest of the same permutation, without drawing.
`ResumableLoader` is a DataLoader over it that Lightning treats as stateful: the fit loop saves
its `state_dict()` in every checkpoint and, resuming mid-epoch, hands it back through
`load_state_dict()` before the epoch's iterator is built. The samples trained on are counted by
the trainer (`progress`), not by the loader, whose iterator runs ahead of training (prefetch).

The loader draws its workers' base seed from its own generator, so building an iterator does
not touch the global RNG; the sampler draws twice per epoch (the first draw stands for the
base seed the DataLoader used to take from the global RNG), so an uninterrupted run keeps the
shuffle order of earlier lsmerge versions (with `num_workers: 0`).

`rng_states()` / `restore_rng_states()`: Python `random`, NumPy, torch CPU and CUDA.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """A random permutation of `range(n)` per epoch whose position can be saved and restored."""

    def __init__(self, n: int):
        self.n = n
        self.seed: int | None = None
        self._resume: dict | None = None

    def __len__(self) -> int:
        return self.n

    def state_dict(self, consumed: int) -> dict:
        """The state after `consumed` samples of the current epoch were trained on."""
        return {"seed": self.seed, "consumed": int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the saved epoch at the next iteration (a finished epoch starts a new one)."""
        self._resume = dict(state)

    def __iter__(self) -> Iterator[int]:
        state, self._resume = self._resume, None
        if state is not None and state.get("seed") is not None and 0 <= state["consumed"] < self.n:
            self.seed, start = int(state["seed"]), int(state["consumed"])
        else:
            torch.empty((), dtype=torch.int64).random_()  # the base-seed draw of earlier versions (module doc)
            self.seed, start = int(torch.empty((), dtype=torch.int64).random_().item()), 0
        g = torch.Generator()
        g.manual_seed(self.seed)
        yield from torch.randperm(self.n, generator=g)[start:].tolist()


class ResumableLoader(DataLoader):
    """A shuffling DataLoader over a `ResumableSampler`; `progress()` returns how many batches of
    the current epoch were trained on (the trainer's count)."""

    def __init__(self, dataset: Dataset, batch_size: int, progress: Callable[[], int], **kw):
        generator = torch.Generator()
        generator.manual_seed(0)  # workers' base seeds only; the data does not depend on them
        super().__init__(dataset, batch_size=batch_size, sampler=ResumableSampler(len(dataset)), generator=generator, **kw)
        self.progress = progress

    def state_dict(self) -> dict:
        return self.sampler.state_dict(self.progress() * self.batch_size)

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


# -- random-number states ----------------------------------------------------------------------
def rng_states() -> dict:
    """The states of Python `random`, NumPy's global RNG, torch CPU and every CUDA device."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng_states(states: dict) -> None:
    """Set the RNGs to `states` (from `rng_states`); CUDA states only when the device count matches."""
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
