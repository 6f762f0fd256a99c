"""`WeightChunkDataModule`: weight tensors of one model family as windows of chunk tokens.

Pipeline (see `lsmerge.data.chunking` for the formulas):

    checkpoints ──select (kinds, layers, pattern)──> tensors ──normalise, chunk──> cache .npy
    cache (memory-mapped) ──windows of `tokens_per_sample` chunks of ONE tensor──> batches

The normalised chunks of every selected tensor are written once to
``<cache_dir>/<key>.chunks.npy`` (float32, ``(n_chunks_total, chunk_size)``), tensor by tensor,
so building it never holds more than one weight tensor in memory; training reads it with
``np.load(mmap_mode="r")``, so selections larger than RAM work, and every DataLoader worker
opens its own map. The key hashes the inputs (paths, file sizes and times, names, chunk
settings), so a changed checkpoint or setting builds a new cache. A tensor with NaN or Inf
values is one LsMergeError naming it and its file; a failed build leaves no temporary file.

The training loader is resumable (`lsmerge.data.resume`): a checkpoint holds the epoch's
shuffle seed and how many of its samples were trained on, so a fit resumed mid-epoch sees the
rest of the same order (single process; under DDP Lightning's DistributedSampler shuffles).

A sample (dict of tensors) is one window:

    x            (T, chunk_size) float32   normalised values, zero padded
    lengths      (T,) int64                valid values per chunk (0 for padding tokens)
    chunk_index  (T,) int64                index of each chunk inside its tensor
    layer, kind, source, tensor_id  () int64  (layer = num_layers outside the decoder blocks)
    norm         (2,) float64              the tensor's (mean, std)
    threshold    () float32                |w| of the tensor's 0.1% largest-magnitude value

The train / validation split is deterministic: a window goes to validation when a hash of
(seed, source, tensor name, window start) falls below `val_fraction`, so it does not depend on
the order or on the rest of the selection. With ``val_fraction: 0`` nothing is held out and
validation measures reconstruction of (an evenly spaced subset of) the training windows,
which is what a codec used for merging needs.

A checkpoint entry is any model reference of `lsmerge.io.hf.resolve_model`; ``tiny:<dir>``
names the tiny random Llama of `lsmerge.io.tiny` (created in ``<dir>`` when missing), so
recipes and tests run without a download (`configs/vae/tiny.yaml`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Literal, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lsmerge.data import chunking
from lsmerge.data.importance import WeightedWindows, statistics_for
from lsmerge.data.resume import ResumableLoader
from lsmerge.data.task_codes import TASK_CODE_INPUTS, task_code_source
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import KINDS, ArchitectureMap, expand_kinds
from lsmerge.io.hf import resolve_model
from lsmerge.io.store import CheckpointStore, open_checkpoint

OUTLIER_FRACTION = 1e-3
_CACHE_VERSION = 1
Source = Literal["weights", "task_codes"]
SOURCES = get_args(Source)


def select_tensors(
    store: CheckpointStore,
    arch: ArchitectureMap,
    kinds: list[str] | None,
    layers: list[int] | None = None,
    pattern: str | None = None,
) -> list[str]:
    """Names in `store` whose kind is in `kinds` (groups allowed), whose layer is in `layers`
    (negative counts from the end; None = all, non-layer tensors included) and that match the
    regex `pattern` (re.search); floating-point tensors only, in the store's order."""
    wanted = expand_kinds(kinds or ["all"])
    n_layers = arch.num_layers(store.names)
    layer_set = None
    if layers is not None:
        layer_set = set()
        for i in layers:
            j = i + n_layers if i < 0 else i
            if not 0 <= j < n_layers:
                raise LsMergeError(f"layer {i} is out of range for {store.path} ({n_layers} layers: 0..{n_layers - 1}).")
            layer_set.add(j)
    try:
        rx = re.compile(pattern) if pattern else None
    except re.error as e:
        raise LsMergeError(f"pattern {pattern!r} is not a valid regex ({e}).") from None
    out = []
    for name in store.names:
        info = store.info(name)
        if not info.dtype.is_floating_point or info.numel == 0:
            continue
        role = arch.role(name)
        if role.kind not in wanted:
            continue
        if layer_set is not None and role.layer not in layer_set:
            continue
        if rx is not None and not rx.search(name):
            continue
        out.append(name)
    return out


def _file_fingerprint(store: CheckpointStore) -> list:
    files = sorted({store.info(n).file for n in store.names})
    return [(f, (store.path / f).stat().st_size, (store.path / f).stat().st_mtime_ns) for f in files]


def _window_hash(seed: int, source: int, name: str, start: int) -> float:
    h = hashlib.sha1(f"{seed}:{source}:{name}:{start}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


class ChunkWindows(Dataset):
    """Windows of chunk tokens read from a memory-mapped cache (one map per worker process).

    Args:
        chunks_path: the cache `.npy` of shape (n_chunks_total, chunk_size).
        table: per-tensor records (offset, n_chunks, layer, kind, source, norm, threshold).
        windows: (n_windows, 2) int64 array of (tensor_id, start chunk).
        lengths: (n_chunks_total,) int32 valid values per chunk.
        tokens_per_sample: T.
    """

    def __init__(self, chunks_path: str, table: list[dict], windows: np.ndarray, lengths: np.ndarray, tokens_per_sample: int):
        self.chunks_path = chunks_path
        self.windows = windows
        self.lengths = lengths
        self.T = tokens_per_sample
        self.offset = np.array([t["offset"] for t in table], dtype=np.int64)
        self.n_chunks = np.array([t["n_chunks"] for t in table], dtype=np.int64)
        self.layer = torch.tensor([t["layer_index"] for t in table], dtype=torch.int64)
        self.kind = torch.tensor([t["kind_index"] for t in table], dtype=torch.int64)
        self.source = torch.tensor([t["source"] for t in table], dtype=torch.int64)
        self.norm = torch.tensor([t["norm"] for t in table], dtype=torch.float64)
        self.threshold = torch.tensor([t["threshold"] for t in table], dtype=torch.float32)
        self._chunks = None

    def __getstate__(self):  # the memory map is reopened in each worker
        state = self.__dict__.copy()
        state["_chunks"] = None
        return state

    @property
    def chunks(self) -> np.ndarray:
        if self._chunks is None:
            self._chunks = np.load(self.chunks_path, mmap_mode="r")
        return self._chunks

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tid, start = int(self.windows[i, 0]), int(self.windows[i, 1])
        n = min(self.T, int(self.n_chunks[tid]) - start)
        lo = int(self.offset[tid]) + start
        x = torch.zeros(self.T, self.chunks.shape[1], dtype=torch.float32)
        x[:n] = torch.from_numpy(np.array(self.chunks[lo : lo + n], dtype=np.float32))
        lengths = torch.zeros(self.T, dtype=torch.int64)
        lengths[:n] = torch.from_numpy(self.lengths[lo : lo + n].astype(np.int64))
        return {
            "x": x,
            "lengths": lengths,
            "chunk_index": torch.arange(start, start + self.T, dtype=torch.int64),
            "layer": self.layer[tid],
            "kind": self.kind[tid],
            "source": self.source[tid],
            "tensor_id": torch.tensor(tid, dtype=torch.int64),
            "norm": self.norm[tid],
            "threshold": self.threshold[tid],
        }


class WeightChunkDataModule(L.LightningDataModule):
    """Selected weight tensors of one model family, normalised, chunked, windowed, cached.

    Args:
        checkpoints: Hugging Face checkpoint folders of ONE family (or `tiny:<dir>`, see module doc).
        kinds: module kinds or groups to select (`mlp`, `attn`, `qkv`, `mlp_up`, ... see lsmerge.io.archmap).
        layers: decoder-block indices to select (negative counts from the end); None = all.
        pattern: optional regex that selected names must match (re.search).
        layer_pattern: regex naming layers for architectures lsmerge does not know.
        chunk_size: values per chunk token.
        layout: `flat` (flatten then chunk) or `rows` (chunks follow the tensor's rows).
        tokens_per_sample: chunks per sample window T (windows never cross tensors).
        normalization: `zscore`, or `slog` (z-score then signed-log companding, heavy-tail aware).
        slog_kappa: the companding scale kappa of `slog`.
        val_fraction: fraction of windows held out for validation (0 = validate on training windows).
        val_max_windows: cap on validation windows (evenly spaced subset).
        seed: seed of the train / validation split.
        batch_size: windows per batch.
        num_workers: DataLoader worker processes.
        cache_dir: where the normalised chunk cache is written.
        source: what a "tensor" is: `weights` (the checkpoints' weight tensors) or `task_codes` (per
            2-d tensor and checkpoint, the coefficient block C_i = U_r^T (W_i - W_base), shape (r, in), in
            the joint SVD basis of all checkpoints' task matrices: `lsmerge.data.task_codes`, what the
            task-vector codec merges); the checkpoints are then the experts of `base`.
        base: task_codes: the model the checkpoints were fine-tuned from.
        rank_fraction: task_codes: fraction in (0, 1] of each tensor's joint rank kept (default: full).
        importance: input second moments (`lsmerge importance`): batches carry `col_weight` (output weighting).
    """

    def __init__(
        self,
        checkpoints: list[str],
        kinds: list[str] | None = None,
        layers: list[int] | None = None,
        pattern: str | None = None,
        layer_pattern: str | None = None,
        chunk_size: int = 64,
        layout: chunking.Layout = "flat",
        tokens_per_sample: int = 32,
        normalization: chunking.Normalization = "zscore",
        slog_kappa: float = 2.0,
        val_fraction: float = 0.05,
        val_max_windows: int = 512,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str = "checkpoints/vae/cache",
        source: Source = "weights",
        base: str | None = None,
        rank_fraction: float | None = None,
        importance: str | None = None,
    ):
        super().__init__()
        chunking.check_positive(chunk_size=chunk_size, tokens_per_sample=tokens_per_sample, batch_size=batch_size)
        chunking.check_layout(layout)
        chunking.check_normalization(normalization)
        checkpoints = [checkpoints] if isinstance(checkpoints, str) else checkpoints
        if not checkpoints:
            raise LsMergeError("data.checkpoints is empty; list at least one checkpoint folder.")
        if not 0.0 <= val_fraction < 1.0:
            raise LsMergeError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        if num_workers < 0:
            raise LsMergeError(f"num_workers must be >= 0, got {num_workers}.")
        self.save_hyperparameters()
        self.chunk_size = chunk_size
        self.layout = layout
        self.tokens_per_sample = tokens_per_sample
        self.normalization = normalization
        self.slog_kappa = float(slog_kappa)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir)

        self.paths = [str(resolve_model(c)) for c in checkpoints]
        self.stores = [open_checkpoint(p) for p in self.paths]
        self.arch, self.family = self._one_family(layer_pattern)
        self.selection: list[list[str]] = []
        for store in self.stores:
            names = select_tensors(store, self.arch, kinds, layers, pattern)
            if not names:
                raise LsMergeError(
                    f"the selection kinds={kinds} layers={layers} pattern={pattern!r} matches no tensor of "
                    f"{store.path}. Widen it (e.g. kinds: [mlp]) or check names with `lsmerge inspect`."
                )
            self.selection.append(names)
        if source not in SOURCES:
            raise LsMergeError(f"data.source must be one of {SOURCES}, got {source!r}.")
        if source == "weights" and (base is not None or rank_fraction is not None):
            raise LsMergeError("data.base and data.rank_fraction belong to source: task_codes; remove them or set data.source.")
        self.codes = None
        if source == "task_codes":
            self.codes, self.selection = task_code_source(base, self.stores, self.selection, rank_fraction)
            self.hparams[TASK_CODE_INPUTS] = self.codes.input_digests()  # in the checkpoint: checked at merge time
        self.tensors = self._tensor_specs()
        self.num_layers = max(self.arch.num_layers(s.names) for s in self.stores)
        self.num_sources = len(self.stores)
        self.importance = statistics_for(importance, self.tensors)
        self.importance_digest = self.importance.digest if self.importance else None
        self._train: ChunkWindows | None = None
        self._val: ChunkWindows | None = None

    # -- discovery (cheap: headers only) -----------------------------------------------------
    def _one_family(self, layer_pattern: str | None) -> tuple[ArchitectureMap, str]:
        archs = [ArchitectureMap.from_config(s.config, layer_pattern) for s in self.stores]
        families = [a.family.name for a in archs]
        if len(set(families)) > 1:
            listing = ", ".join(f"{s.path} ({f})" for s, f in zip(self.stores, families))
            raise LsMergeError(
                f"one VAE is fitted on one model family, but the checkpoints mix families: {listing}. "
                "Fit one VAE per family and align them with OT at merge time."
            )
        return archs[0], families[0]

    def _tensor_specs(self) -> list[dict]:
        """Unique selected names with shape, layer and kind (what the model is trained on)."""
        specs: dict[str, dict] = {}
        for store, names in zip(self.stores, self.selection):
            for name in names:
                shape = self._shape(store, name)
                if name in specs and specs[name]["shape"] != shape:
                    raise LsMergeError(
                        f"tensor {name} has shape {specs[name]['shape']} in one checkpoint and {shape} in {store.path}; "
                        "one VAE needs the same shapes per name. Fit the checkpoints separately."
                    )
                role = self.arch.role(name)
                specs.setdefault(name, {"name": name, "shape": shape, "layer": role.layer, "kind": role.kind})
        return list(specs.values())

    def _shape(self, store: CheckpointStore, name: str) -> list[int]:
        """The shape of what is trained on: the weight, or its task-code block (r, in)."""
        return list(self.codes.code_shape(name) if self.codes is not None else store.shape(name))

    def _records(self):
        """(source, name) pairs in cache order: by source, or by name for task codes (one SVD per name)."""
        if self.codes is None:
            return [(i, n) for i, names in enumerate(self.selection) for n in names]
        return [(i, n) for n in self.selection[0] for i in range(len(self.stores))]

    # -- cache ---------------------------------------------------------------------------------
    def cache_key(self) -> str:
        codes = {} if self.codes is None else {"base": [str(self.codes.base.path), _file_fingerprint(self.codes.base)],
                                               "rank_fraction": self.codes.rank_fraction}
        blob = json.dumps({**codes, "v": _CACHE_VERSION, "chunk_size": self.chunk_size, "layout": self.layout,
                           "sources": [[str(s.path), _file_fingerprint(s), names] for s, names in zip(self.stores, self.selection)],
                           "normalization": self.normalization, "kappa": self.slog_kappa}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def cache_paths(self) -> tuple[Path, Path]:
        key = self.cache_key()
        return self.cache_dir / f"{key}.chunks.npy", self.cache_dir / f"{key}.table.json"

    def prepare_data(self) -> None:
        """Write the normalised chunk cache once (local rank 0; others wait at Lightning's barrier)."""
        chunks_path, table_path = self.cache_paths
        if table_path.exists() and chunks_path.exists():
            return
        created = not self.cache_dir.exists()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        table, total = [], 0
        for source, name in self._records():
            shape = self._shape(self.stores[source], name)
            n = chunking.num_chunks(shape, self.chunk_size, self.layout)
            role = self.arch.role(name)
            table.append({"name": name, "source": source, "shape": shape, "offset": total, "n_chunks": n,
                          "layer_index": self.num_layers if role.layer is None else role.layer,
                          "kind_index": KINDS.index(role.kind)})
            total += n
        tmp = chunks_path.with_name(f"{chunks_path.name}.tmp-{os.getpid()}")
        tmp_table = table_path.with_name(f"{table_path.name}.tmp-{os.getpid()}")
        try:
            self._write_chunks(tmp, table, total)
            os.replace(tmp, chunks_path)
            tmp_table.write_text(json.dumps({"tensors": table, "chunk_size": self.chunk_size}, indent=1))
            os.replace(tmp_table, table_path)
        finally:  # a failure (a NaN, a full disk, Ctrl-C) leaves no partial file behind
            tmp.unlink(missing_ok=True)
            tmp_table.unlink(missing_ok=True)
            if created and not any(self.cache_dir.iterdir()):
                self.cache_dir.rmdir()

    def _write_chunks(self, path: Path, table: list[dict], total: int) -> None:
        """Normalise and chunk every tensor of `table` into the .npy at `path` (fills each
        record's threshold and norm); LsMergeError naming a tensor with NaN or Inf values."""
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, self.chunk_size))
        for rec in table:
            store = self.stores[rec["source"]]
            w = store.get(rec["name"]) if self.codes is None else self.codes.codes(rec["name"])[rec["source"]]
            if w.is_floating_point() and not bool(torch.isfinite(w).all()):
                where = Path(store.path) / store.info(rec["name"]).file
                raise LsMergeError(
                    f"tensor {rec['name']!r} in {where} holds NaN or Inf values; a VAE cannot be fitted on it. "
                    "Repair or re-export that checkpoint, or leave the tensor out (data.pattern / data.layers)."
                )
            chunks, _, norm = chunking.tensor_to_tokens(w, self.chunk_size, self.layout, self.normalization, self.slog_kappa)
            flat = w.reshape(-1).abs().to(torch.float32)
            k = max(1, math.ceil(OUTLIER_FRACTION * flat.numel()))
            rec["threshold"] = float(torch.topk(flat, k).values[-1])
            rec["norm"] = [float(norm[0]), float(norm[1])]
            arr[rec["offset"] : rec["offset"] + rec["n_chunks"]] = chunks.numpy()
            del w, chunks, flat
        arr.flush()
        del arr

    def load_table(self) -> list[dict]:
        chunks_path, table_path = self.cache_paths
        if not table_path.exists():
            self.prepare_data()
        return json.loads(table_path.read_text())["tensors"]

    # -- datasets --------------------------------------------------------------------------------
    def split_windows(self, table: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Deterministic (train, val) arrays of (tensor_id, start) rows."""
        hp = self.hparams
        train, val, scored = [], [], []
        for tid, rec in enumerate(table):
            for start in chunking.window_starts(rec["n_chunks"], self.tokens_per_sample):
                if hp.val_fraction > 0:
                    h = _window_hash(hp.seed, rec["source"], rec["name"], start)
                    scored.append((h, tid, start))
                    (val if h < hp.val_fraction else train).append((tid, start))
                else:
                    train.append((tid, start))
        if hp.val_fraction > 0 and not val:
            _, tid, start = min(scored)
            train.remove((tid, start))
            val.append((tid, start))
        if hp.val_fraction == 0:
            val = list(train)
        if len(val) > hp.val_max_windows:
            idx = np.linspace(0, len(val) - 1, hp.val_max_windows).round().astype(int)
            val = [val[i] for i in idx]
        if not train:
            raise LsMergeError("no training windows left after the validation split; lower val_fraction.")
        return np.array(train, dtype=np.int64).reshape(-1, 2), np.array(val, dtype=np.int64).reshape(-1, 2)

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        table = self.load_table()
        lengths = np.concatenate(
            [chunking.chunk_lengths(rec["shape"], self.chunk_size, self.layout).numpy().astype(np.int32) for rec in table]
        )
        train, val = self.split_windows(table)
        path = str(self.cache_paths[0])
        self.table = table
        self._train = ChunkWindows(path, table, train, lengths, self.tokens_per_sample)
        self._val = ChunkWindows(path, table, val, lengths, self.tokens_per_sample)
        self._train, self._val = WeightedWindows.wrap(self.importance, table, self.chunk_size, self.layout, self._train, self._val)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        kw = dict(num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())
        if shuffle and not (self.trainer is not None and self.trainer.world_size > 1):
            # resumable mid-epoch (lsmerge.data.resume); under DDP Lightning's DistributedSampler shuffles
            return ResumableLoader(ds, self.batch_size, progress=self._batches_trained, **kw)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, **kw)

    def _batches_trained(self) -> int:
        """Training batches of the current epoch that went through a training step."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._val, shuffle=False)
