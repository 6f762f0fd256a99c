"""`lsmerge.io.gguf`: a tiny llama GGUF (built in conftest) -> HF checkpoint; logits equal transformers' own GGUF load."""

from __future__ import annotations

import json

import pytest
import torch

gguf = pytest.importorskip("gguf")

from conftest import GGUF_LAYERS, write_tiny_llama_gguf  # noqa: E402
from lsmerge.errors import LsMergeError  # noqa: E402
from lsmerge.io.gguf import import_gguf, load_gguf_model  # noqa: E402
from lsmerge.io.store import open_checkpoint  # noqa: E402

PROMPT = "the cat sat on the mat"


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("tied", [True, False])
def test_import_logits_equal_transformers_gguf_load(tmp_path, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = write_tiny_llama_gguf(tmp_path / "m.gguf", tied=tied)
    out = import_gguf(gguf=str(src), out=str(tmp_path / "hf"))

    store = open_checkpoint(out)
    assert ("lm_head.weight" in store.names) is (not tied)
    assert store.config["tie_word_embeddings"] is tied
    assert "quantization_config" not in store.config
    assert store.config["num_hidden_layers"] == GGUF_LAYERS
    assert all(store.dtype(n) == torch.float32 for n in store.names)

    ref_model, ref_tok = load_gguf_model(src)
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok(PROMPT).input_ids == ref_tok(PROMPT).input_ids
    assert len(tok(PROMPT).input_ids) < len(PROMPT)  # the merges are used, not only bytes
    torch.testing.assert_close(_logits(ours, tok), _logits(ref_model, ref_tok), rtol=0, atol=0)


def test_import_bfloat16(tmp_path, tiny_gguf):
    out = import_gguf(gguf=str(tiny_gguf), out=str(tmp_path / "hf"), dtype="bfloat16")
    store = open_checkpoint(out)
    assert {store.dtype(n) for n in store.names} == {torch.bfloat16}
    assert store.config["dtype"] == "bfloat16"


def test_import_is_deterministic(tmp_path, tiny_gguf):
    a = import_gguf(gguf=str(tiny_gguf), out=str(tmp_path / "a"))
    b = import_gguf(gguf=str(tiny_gguf), out=str(tmp_path / "b"), max_shard_size="20KB")
    c = import_gguf(gguf=str(tiny_gguf), out=str(tmp_path / "c"), max_shard_size="20KB")
    files_b = sorted(p.name for p in b.iterdir())
    assert files_b == sorted(p.name for p in c.iterdir())
    assert "model.safetensors.index.json" in files_b and "tokenizer.json" in files_b
    for name in files_b:
        assert (b / name).read_bytes() == (c / name).read_bytes(), name
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert str(tmp_path) not in (a / name).read_text()
    torch.testing.assert_close(open_checkpoint(a).get("model.norm.weight"), open_checkpoint(b).get("model.norm.weight"))


def test_missing_file(tmp_path):
    with pytest.raises(LsMergeError, match="does not exist"):
        import_gguf(gguf=str(tmp_path / "nope.gguf"), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_not_a_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(LsMergeError, match="not a GGUF file"):
        import_gguf(gguf=str(fake), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_truncated_gguf(tmp_path, tiny_gguf):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(LsMergeError, match="truncated or corrupted"):
        import_gguf(gguf=str(cut), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_dtype_and_existing_output(tmp_path, tiny_gguf):
    with pytest.raises(LsMergeError, match="unknown dtype"):
        import_gguf(gguf=str(tiny_gguf), out=str(tmp_path / "out"), dtype="int3")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(LsMergeError, match="not empty"):
        import_gguf(gguf=str(tiny_gguf), out=str(taken))
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_cli_import_gguf(tmp_path, tiny_gguf, capsys):
    from lsmerge.cli import main

    main(["import-gguf", "--gguf", str(tiny_gguf), "--out", str(tmp_path / "hf"), "--dtype", "float32"])
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(SystemExit):
        main(["import-gguf", "--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x")])
    assert "does not exist" in capsys.readouterr().err
