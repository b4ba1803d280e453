"""The prompt contract: rendering, prompt parity on the real Qwen3 tokenizer, parsing."""

import re

import prompt
from prompt import encode_example, parse_output, prompt_ids, qmd_keeps, qmd_query_terms, render_prompt

PAIRS = [
    ["hyde", "Authentication is configured in config/auth.yml with the AUTH_SECRET variable."],
    ["vec", "where is the authentication configuration stored"],
    ["lex", "auth config file"],
    ["lex", "authentication settings"],
]
THINK_IDS = (151667, 151668)  # <think>, </think> in Qwen3


def test_user_message_is_exactly_what_qmd_sends():
    assert prompt.user_message("auth config") == "/no_think Expand this search query: auth config"


def test_target_is_rendered_in_canonical_order():
    assert prompt.render_target(PAIRS).splitlines() == [
        "lex: auth config file",
        "lex: authentication settings",
        "vec: where is the authentication configuration stored",
        "hyde: Authentication is configured in config/auth.yml with the AUTH_SECRET variable.",
    ]


def test_generation_prompt_ends_with_empty_think_block(qwen_tokenizer):
    text = render_prompt(qwen_tokenizer, "auth config")
    assert text == (
        "<|im_start|>user\n/no_think Expand this search query: auth config<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_prompt_parity_with_full_chat_template_rendering(qwen_tokenizer):
    """Training ids = the chat template's rendering of the whole conversation, and their prompt part
    is token-for-token the generation prompt."""
    hf = qwen_tokenizer._tokenizer
    for query in ["auth config", "Docker 容器 网络", "who is TDS motorsports?", "  spaces  around  "]:
        ids, prompt_len = encode_example(qwen_tokenizer, query, PAIRS)
        assert ids[:prompt_len] == prompt_ids(qwen_tokenizer, query)
        full = hf.apply_chat_template(prompt.messages(query, PAIRS), tokenize=False, enable_thinking=False)
        full_ids = hf.encode(full, add_special_tokens=False)
        # the template adds a trailing newline after <|im_end|>; we stop training at <|im_end|>
        assert full_ids[: len(ids)] == ids
        assert hf.decode(full_ids[len(ids) :]) == "\n"


def test_think_block_is_prompt_side_and_never_a_target(qwen_tokenizer):
    ids, prompt_len = encode_example(qwen_tokenizer, "auth config", PAIRS)
    assert all(t in ids[:prompt_len] for t in THINK_IDS)
    assert not any(t in ids[prompt_len:] for t in THINK_IDS)
    completion = qwen_tokenizer.decode(ids[prompt_len:])
    assert completion.startswith("lex: auth config file\n")
    assert completion.endswith("\n<|im_end|>")
    assert ids[-1] == qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_completion_matches_qmd_grammar_then_stops(qwen_tokenizer):
    """QMD's grammar ends every line with a newline: the trained completion does too, last line
    included, so under the grammar the model reaches <|im_end|> where it learned to stop."""
    import convert  # QMD_GRAMMAR lives with the export

    assert 'line ::= type ": " content "\\n"' in convert.QMD_GRAMMAR
    ids, prompt_len = encode_example(qwen_tokenizer, "auth config", PAIRS)
    text = qwen_tokenizer.decode(ids[prompt_len:])
    body, end = text[: -len("<|im_end|>")], text[-len("<|im_end|>") :]
    assert end == "<|im_end|>"
    assert re.fullmatch(r"((lex|vec|hyde): [^\n]+\n)+", body), body


def test_template_fallback_is_chatml_when_tokenizer_has_none(qwen_tokenizer):
    hf = qwen_tokenizer._tokenizer
    saved = hf.chat_template
    try:
        hf.chat_template = None
        text = render_prompt(qwen_tokenizer, "auth")
        assert text.endswith("<|im_start|>assistant\n") and "<think>" not in text
        ids, n = encode_example(qwen_tokenizer, "auth", PAIRS)
        assert ids[:n] == prompt_ids(qwen_tokenizer, "auth")
        assert qwen_tokenizer.decode(ids[n:]).endswith("<|im_end|>")
    finally:
        hf.chat_template = saved


def test_parse_valid_lines_and_blank_lines():
    p = parse_output("lex: a b\n\nvec:  c d e \r\nhyde: f\n")
    assert p.lines == [("lex", "a b"), ("vec", "c d e"), ("hyde", "f")]
    assert not p.invalid and not p.empty and not p.leaked and not p.think


def test_parse_flags_invalid_empty_think_and_leaks():
    p = parse_output("<think>\nhmm\n</think>\nlex: a\nLex: b\n- vec: c\nvec:\nplain prose<|im_end|>")
    assert p.think
    assert p.lines == [("lex", "a")]
    assert p.invalid == ["Lex: b", "- vec: c", "plain prose<|im_end|>"]
    assert p.empty == ["vec"]
    assert p.leaked == ["<|im_end|>"]


def test_parse_never_raises_on_odd_input():
    for text in [None, "", "\n\n", ":", "lex:", "x" * 100000, "\x00\ufffd", 42]:
        parse_output(text)


def test_qmd_terms_match_qmd_source_behaviour():
    # QMD: lower-case, replace [^a-z0-9\s] by spaces, split on whitespace
    assert qmd_query_terms("Steuererklärung 2023") == ("steuererkl", "rung", "2023")
    assert qmd_query_terms("Docker 容器 网络") == ("docker",)
    assert qmd_query_terms("如何配置") == ()
    assert qmd_query_terms("node.js C++") == ("node", "js", "c")
    terms = qmd_query_terms("auth config")
    assert qmd_keeps("Authentication settings", terms)  # substring: "auth" in "authentication"
    assert not qmd_keeps("login setup", terms)
    assert qmd_keeps("anything at all", ())
