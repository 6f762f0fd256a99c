"""Getting a codec for a merge: load a saved one (PCA, task-vector, VAE), fit a PCA codec on the inputs, check coverage."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from lsmerge.codecs.base import Codec
from lsmerge.codecs.pca import CODEC_JSON, PCACodec
from lsmerge.codecs.side_channel import SideChannelCodec, check_fraction, check_selection
from lsmerge.data.importance import IMPORTANCE_FILE, ImportanceStats
from lsmerge.codecs.task_vector import CODEC_JSON as TASK_VECTOR_JSON, TaskVectorCodec
from lsmerge.codecs.task_code_vae import TaskCodeVAECodec, task_code_data
from lsmerge.errors import LsMergeError
from lsmerge.io.ckpt import check_ckpt_path, is_url
from lsmerge.io.compat import check_finite, model_family, same_family
from lsmerge.io.store import CheckpointStore


def load_codec(spec: str, device: str = "cpu", importance: str | None = None, side_channel: float = 0.0,
               side_select: str = "error") -> Codec:
    """A saved PCA or task-vector codec folder, or a weight-VAE checkpoint (the one place the VAE plugs in).

    A task-vector codec, and a VAE fitted on task-vector codes (``data.source: task_codes`` in its
    checkpoint: a `TaskCodeVAECodec`), come back unbound: `bind` them to the merge's base and experts. A codec fitted
    with importance weighting is loaded with its calibration statistics (`importance`, default
    `importance.safetensors` beside it; the digest must match); with `side_channel` q > 0 a PCA or
    VAE codec is wrapped in a `SideChannelCodec` (scores from those statistics, or from
    `importance` for a plain codec; `side_select`: saliency or error)."""
    if side_channel:
        check_fraction(side_channel)
        check_selection(side_select)
    if is_url(spec):
        check_ckpt_path(spec, "codec")  # refused: download it and pass the local file
    path = Path(spec).expanduser()
    if not path.exists():
        raise LsMergeError(f"codec {spec!r} not found: give `pca`, `task_vector`, a saved PCA or task-vector codec folder, "
                           "or a trained VAE checkpoint.")
    if (path / CODEC_JSON).exists():
        codec = PCACodec.load(path, importance)
        stats = codec.importance or (ImportanceStats.load(importance) if importance else None)
    elif (path / TASK_VECTOR_JSON).exists():
        if side_channel:
            raise LsMergeError("the side channel wraps a PCA or VAE codec, not a task-vector codec; drop side_channel.")
        return TaskVectorCodec.load(path, device=device)
    else:
        try:
            from lsmerge.codecs.vae import VAECodec, read_vae_checkpoint, weight_vae_from
        except ImportError as e:
            raise LsMergeError(f"{path} is not a PCA codec and the VAE codec is unavailable ({e}). Use codec: pca.") from None
        ckpt = read_vae_checkpoint(path)
        if task_code_data(ckpt) is not None:  # a VAE over task-vector codes: bind it to the merge's base and experts
            if side_channel or importance:
                raise LsMergeError(f"the VAE {path} was fitted on task-vector codes; it takes no side channel or --importance "
                                   "(delta: latent corrects its reconstruction error exactly). Drop side_channel / importance.")
            return TaskCodeVAECodec.from_checkpoint(ckpt, path, device=device)
        codec = VAECodec(weight_vae_from(ckpt))
        stats = vae_statistics(path, codec, importance)
    return SideChannelCodec(codec, side_channel, stats, side_select) if side_channel else codec


def vae_statistics(path: Path, codec, importance: str | None) -> ImportanceStats | None:
    """The statistics of an output-weighted VAE (given, or beside its checkpoint), digest checked."""
    digest = codec.model.hparams.get("importance_digest") if codec.model.hparams.get("output_weighting") else None
    found = Path(importance) if importance else path.parent / IMPORTANCE_FILE
    if digest is None:
        return ImportanceStats.load(importance) if importance else None
    if not found.is_file():
        raise LsMergeError(f"the VAE {path} was trained with importance weighting (calibration digest {digest[:12]}) "
                           f"and is used with its statistics, but {found} does not exist. Pass --importance with the "
                           f"file of data.importance it was trained with, or copy it beside the checkpoint as {IMPORTANCE_FILE}.")
    stats = ImportanceStats.load(found)
    stats.check_digest(digest, f"the VAE {path}")
    return stats


def fit_pca(stores: Sequence[CheckpointStore], names: Sequence[str], *, chunk_size: int, rank: int | None,
            per: str, layout: str, family: str | None, delta_base: CheckpointStore | None, desc: str,
            progress: bool = True) -> PCACodec:
    """A PCA codec fitted on each name's copies in `stores` (on W_i - W_base when `delta_base`), streamed."""

    def copies():
        for n in tqdm(names, desc=desc, unit="tensor", leave=False, disable=not progress):
            ts = [check_finite(s.get(n), n, s) for s in stores]
            if delta_base is not None:
                b = delta_base.get(n).float()
                ts = [t.float() - b for t in ts]
            yield n, ts

    return PCACodec.fit(copies(), chunk_size=chunk_size, rank=rank, per=per, family=family, layout=layout)


def check_codec(codec: Codec, store: CheckpointStore, selected: Sequence[str], kinds: Sequence[str],
                allow_partial: bool = False) -> list[str]:
    """The selected tensors of `store` the codec covers; LsMergeError for another family, no overlap,
    or (unless `allow_partial`) a codec that covers only some of the selected tensors.

    The selection is the tensors of the kinds the user chose (`kinds`); a codec trained on fewer
    layers, or on fewer of those kinds, than the model has is partial: the tensors it misses would
    silently go to the weight-space fallback."""
    fam = getattr(codec, "family", None)
    model_fam = model_family(store.config)
    if fam and model_fam and not same_family(fam, model_fam):
        raise LsMergeError(f"the codec was trained on {fam} weights but {store.path} is a {model_fam} model. "
                           f"Use a codec trained on {model_fam} (or codec: pca).")
    covered = [n for n in selected if codec.covers(n)]
    if not covered:
        trained = getattr(codec, "kinds", None)
        raise LsMergeError(f"the codec covers none of the selected tensors (kinds {list(kinds)}) of {store.path}"
                           + (f"; it was trained on kinds {list(trained)}" if trained else "")
                           + ". Select the kinds it was trained on (--kinds) or use a codec trained on this model.")
    missing = [n for n in selected if not codec.covers(n)]
    if missing and not allow_partial:
        trained = getattr(codec, "kinds", None)
        raise LsMergeError(f"the codec covers only {len(covered)} of the {len(selected)} selected tensors (kinds {list(kinds)}) "
                           f"of {store.path}: {len(missing)} are not covered, e.g. {missing[0]}"
                           + (f" (it was trained on kinds {list(trained)})" if trained else "")
                           + ". Select only what it was trained on (--kinds), use a codec trained on the whole model, or "
                           "pass --allow_partial_codec true to merge the uncovered tensors by the fallback.")
    return covered
