"""The prompt contract: rendering, prompt parity on the real Qwen3 tokenizer, parsing."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_generation_prompt_is_the_one_qmd_sends(qwen_tokenizer):
    """node-llama-cpp's default system prompt, QMD's user turn, no think block; the BOS token first
    (config.json's, as the GGUF export writes it and node-llama-cpp's ChatML wrapper sends it)."""
    text = render_prompt(qwen_tokenizer, "auth config")
    assert text == (
        "<|endoftext|><|im_start|>system\nYou are a helpful, respectful and honest assistant. Always answer as "
        "helpfully as possible.\nIf a question does not make any sense, or is not factually coherent, explain why "
        "instead of answering something incorrectly. If you don't know the answer to a question, don't share false "
        "information.<|im_end|>\n<|im_start|>user\n/no_think Expand this search query: auth config<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_fills_in_the_default_system_prompt(qwen_tokenizer):
    """A llama.cpp caller that sends only the user turn gets the same prompt."""
    hf = qwen_tokenizer._tokenizer
    user_only = hf.apply_chat_template(
        prompt.messages("auth config")[1:],
        chat_template=prompt.CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
    )
    assert user_only == render_prompt(qwen_tokenizer, "auth config")
    custom = [{"role": "system", "content": "Be brief."}] + prompt.messages("q")[1:]
    text = hf.apply_chat_template(
        custom, chat_template=prompt.CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert "Be brief." in text and prompt.SYSTEM_PROMPT not in text


def test_prompt_parity_with_full_chat_template_rendering(qwen_tokenizer):
    """Training ids = the chat template's rendering of the whole conversation, and their prompt part
    is token-for-token the generation prompt."""
    hf = qwen_tokenizer._tokenizer
    for query in ["auth config", "Docker 容器 网络", "who is TDS motorsports?", "  spaces  around  "]:
        ids, prompt_len = encode_example(qwen_tokenizer, query, PAIRS)
        assert ids[:prompt_len] == prompt_ids(qwen_tokenizer, query)
        full = hf.apply_chat_template(
            prompt.messages(query, PAIRS), chat_template=prompt.chat_template(qwen_tokenizer), tokenize=False
        )
        full_ids = hf.encode(full, add_special_tokens=False)
        # the template adds a trailing newline after <|im_end|>; we stop training at <|im_end|>
        assert full_ids[: len(ids)] == ids
        assert hf.decode(full_ids[len(ids) :]) == "\n"


def test_no_think_block_in_prompt_or_target(qwen_tokenizer):
    ids, prompt_len = encode_example(qwen_tokenizer, "auth config", PAIRS)
    assert not any(t in ids for t in THINK_IDS)
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


def test_chatml_models_use_the_contract_template_others_their_own(qwen_tokenizer, monkeypatch):
    hf = qwen_tokenizer._tokenizer
    before = render_prompt(qwen_tokenizer, "auth")
    monkeypatch.setattr(hf, "chat_template", "{{ 'own template' }}")
    assert render_prompt(qwen_tokenizer, "auth") == before  # a ChatML vocabulary: the contract's template
    monkeypatch.setattr(prompt, "_CHATML_TOKENS", ("<|no-such-token|>",))
    assert render_prompt(qwen_tokenizer, "auth") == "own template"
    monkeypatch.setattr(hf, "chat_template", None)
    with pytest.raises(ValueError, match="neither ChatML tokens"):
        render_prompt(qwen_tokenizer, "auth")


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


def test_the_output_contract_table_generates_the_grammar_and_is_read_by_data_and_teacher(monkeypatch):
    import dataclasses

    import convert
    import data
    import teacher

    # QMD 2.8.3's expansion grammar, character for character
    qmd = 'root ::= line+\nline ::= type ": " content "\\n"\ntype ::= "lex" | "vec" | "hyde"\ncontent ::= [^\\n]+\n'
    assert prompt.QMD_GRAMMAR == qmd and convert.QMD_GRAMMAR == qmd
    assert prompt.LINE_TYPES == tuple(t.name for t in prompt.OUTPUT_CONTRACT)
    assert 'type ::= "lex" | "vec" | "hyde" | "note"' in prompt.qmd_grammar((*prompt.LINE_TYPES, "note"))
    for t in prompt.OUTPUT_CONTRACT:  # the teacher is told each type's counts from the table
        assert f"{t.name}: " in teacher.EXPAND_SYSTEM and prompt.line_count_text(t) in teacher.EXPAND_SYSTEM
    # data.py's count check reads the table: allow no hyde line and a hyde example becomes a problem
    ex = data.Example(
        "auth config", [("lex", "auth config file"), ("vec", "where is the auth config"), ("hyde", "x" * 60)]
    )
    assert not any("hyde line(s)" in p for p in data.check_example(ex, min_score=0))
    no_hyde = tuple(dataclasses.replace(t, max_lines=0) if t.name == "hyde" else t for t in prompt.OUTPUT_CONTRACT)
    monkeypatch.setattr(data, "OUTPUT_CONTRACT", no_hyde)
    assert "1 hyde line(s); want 0-0" in data.check_example(ex, min_score=0)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_fast_path_of_qmd_terms_equals_the_regex(text):
    # qmd_query_terms blanks ASCII text with bytes.translate (speed); QMD's rule is the regex
    assert prompt.ascii_alnum_runs(text.lower()) == re.findall("[a-z0-9]+", text.lower())
    assert qmd_query_terms(text) == tuple(re.sub(r"[^a-z0-9\s]", " ", text.lower()).split())
