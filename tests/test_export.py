"""`lsmerge.export`: a model with its covered tensors replaced by a fitted VAE's reconstructions;
a model of other shapes is refused."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_llama
from lsmerge.errors import LsMergeError
from lsmerge.export import export


def test_export_replaces_covered_tensors_and_refuses_other_shapes(vae_fit_run, vae_llama, tmp_path):
    ckpt = vae_fit_run / "last.ckpt"
    dst = tmp_path / "exported"
    export(vae=str(ckpt), model=vae_llama, out=str(dst))
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(dst)
    ref = AutoModelForCausalLM.from_pretrained(vae_llama)
    assert torch.equal(m.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)

    # a model with other shapes is refused, naming the mismatch
    other = tmp_path / "other"
    make_tiny_llama(other, seed=None, hidden=48, intermediate_size=128)
    with pytest.raises(LsMergeError, match="mlp.*shape"):
        export(vae=str(ckpt), model=str(other), out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
