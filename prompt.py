"""The prompt contract: the one place that says what the model reads and what it writes.

Every script goes through this module: SFT builds its training sequences with `encode_example`,
GRPO and eval build generation prompts with `prompt_ids`, reward.py and eval parse model text with
`parse_output`, and convert.py embeds `CHAT_TEMPLATE`-compatible rendering in the GGUF and Modelfile.

Decisions (and why):

* **The prompt is the one QMD really sends.** QMD 2.8.3 calls node-llama-cpp's ``LlamaChatSession``
  with no system prompt, so node-llama-cpp 3.20 puts its own default one in (``SYSTEM_PROMPT``
  below, verbatim), then the user turn, exactly ``/no_think Expand this search query: {query}``.
  Training, eval, the GGUF's template and the Ollama Modelfile all render that same conversation.
* **One template for every ChatML model** (Qwen2/2.5/3, SmolLM2, ...): ``CHAT_TEMPLATE`` - plain
  ChatML with the default system prompt filled in when a caller gives none, and the tokenizer's BOS
  token first when it has one. It is what node-llama-cpp renders for such a model whichever wrapper
  it picks (QwenChatWrapper, ChatMLChatWrapper - which writes the BOS token even when it is
  ``<|im_start|>`` itself, as in SmolLM2 - or a Jinja template equivalent to them); convert.py
  embeds it in the GGUF, so llama.cpp and QMD render the same ids, and tests/test_qmd_parity.py
  checks the ids QMD evaluates against ``prompt_ids``. Models without ChatML tokens keep their own
  chat template (with the same system and user messages); QMD parity is then checked at export.
* **No think block.** Qwen3's own template would end the prompt with ``<think>\n\n</think>\n\n``
  when thinking is off, but QMD's prompt ends at ``<|im_start|>assistant\n`` and its grammar lets the
  first generated token only start ``lex``/``vec``/``hyde``: the model is trained to answer at once.
* A training example is ``prompt_ids + completion_ids`` where the completion is the target text,
  every line ended by a newline (the last one too), followed by the template's end-of-turn token
  (``<|im_end|>``). QMD decodes under a grammar that ends every line with a newline; a model
  trained without the last one would be forced past the point where it learned to stop, and would
  write extra lines up to QMD's 600-token cap. Prompt and completion are tokenized
  separately, so the prompt part of every training example is token-for-token the generation prompt
  (tests/test_prompt.py checks this against the full chat-template rendering on the Qwen3 tokenizer).
* Targets are rendered in a canonical order - lex, then vec, then hyde - whatever order the data file
  lists them in. A fixed order is easier for a small model to learn, and with hyde last a truncated
  generation still keeps its keyword and semantic lines.

* **The output contract is a table**, ``OUTPUT_CONTRACT``: each line type, how many lines of it an
  expansion has, what it feeds in QMD and what a teacher is told to write. QMD's grammar
  (``QMD_GRAMMAR``) is generated from it and its run-time sampling constants sit beside it;
  data.py's count checks, the teacher's instructions and convert.py's exports read them. Adding a
  line type touches the table and reward.py's rules for it.

This module imports no MLX: reward.py and the data tools use the parser without loading a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

USER_TEMPLATE = "/no_think Expand this search query: {query}"
# node-llama-cpp 3.20.0's default system prompt (dist/config.js, defaultChatSystemPrompt), which every
# LlamaChatSession without a systemPrompt - QMD's expansion session - sends before the user turn.
SYSTEM_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible.\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something incorrectly. If you don't know the answer to a question, don't share false information."
)


# ----------------------------------------------------------------------------
# The output contract: what the model writes, and how QMD decodes it


@dataclass(frozen=True)
class LineType:
    name: str  # the `name: ` prefix of the line
    min_lines: int  # lines of this type in a good expansion
    max_lines: int
    feeds: str  # which of QMD's searches the line goes to
    teach: str  # what a teacher model is told to write (teacher.py)


# Characters of a good hyde passage (reward.py's hyde length rule, the teacher's instructions).
HYDE_CHARS = (50, 200)

OUTPUT_CONTRACT = (
    LineType(
        "lex",
        1,
        3,
        'BM25 full-text search (QMD\'s lex syntax: terms ANDed, "phrase", -exclude)',
        "a short keyword query for BM25 full-text search ({count}). Keep every name and key term of the query; "
        'no filler such as "how to" or "information about". QMD\'s lex syntax may help: "exact phrase", -excluded.',
    ),
    LineType(
        "vec",
        1,
        3,
        "vector search (embedded)",
        "a natural-language rephrasing for vector search ({count}): a full question or sentence with the query's intent.",
    ),
    LineType(
        "hyde",
        0,
        1,
        "vector search (a hypothetical passage, embedded)",
        f"one passage of {HYDE_CHARS[0]}-{HYDE_CHARS[1]} characters that could appear in the note that answers "
        "the query ({count}).",
    ),
)
LINE_TYPES = tuple(t.name for t in OUTPUT_CONTRACT)
CONTRACT = {t.name: t for t in OUTPUT_CONTRACT}


def line_count_text(t: LineType) -> str:
    """ "1-3 lines", "0-1 line": how many lines of a type, as the teacher is told."""
    return f"{t.min_lines}-{t.max_lines} line" + ("s" if t.max_lines > 1 else "")


def qmd_grammar(types=LINE_TYPES) -> str:
    """QMD's GBNF for expansion: one or more `type: text` lines, each ended by a newline."""
    alternatives = " | ".join(f'"{t}"' for t in types)
    return f'root ::= line+\nline ::= type ": " content "\\n"\ntype ::= {alternatives}\ncontent ::= [^\\n]+\n'


QMD_GRAMMAR = qmd_grammar()
# QMD 2.8.3's sampling and limits for expansion (dist/llm.js) as they take effect: eval.py, the demo,
# the Modelfile and the benchmarks sample with them.
#
# The presence penalty is 0 because that is what QMD gets. QMD asks node-llama-cpp for
# `repeatPenalty: {lastTokens: 64, presencePenalty: 0.5}`, but node-llama-cpp 3.20 (QMD 2.8.3's) builds
# its penalty sampler only when `penalty`, the repeat penalty, differs from 1 (AddonSampler.cpp:
# `repeatPenaltyEnabled = repeatPenalty != 1 && ...`), and QMD leaves it unset, at 1. A presence
# penalty alone is never applied: tests/test_qmd_parity.py checks this on the installed node-llama-cpp,
# and fails if a later version starts applying it (then set QMD_REQUESTED_PRESENCE_PENALTY here).
QMD_REQUESTED_PRESENCE_PENALTY = 0.5
QMD_SAMPLING = {"temp": 0.7, "top_k": 20, "top_p": 0.8, "presence_penalty": 0.0}
QMD_PENALTY_WINDOW = 64  # a presence penalty (--presence-penalty) looks at the last 64 generated tokens


def newline_id(tokenizer) -> int:
    """The token node-llama-cpp never penalises (llama.cpp's linefeed token: the first id of "\n")."""
    return tokenizer.encode("\n", add_special_tokens=False)[0]


QMD_MAX_TOKENS = 600
QMD_CONTEXT = 2048
_TYPE_RANK = {t: i for i, t in enumerate(LINE_TYPES)}

# The template of the contract for ChatML models (see the module docstring). The system text lives in
# the template too, so a llama.cpp server or script that sends only the user turn gets the same prompt.
CHAT_TEMPLATE = (
    "{%- if bos_token %}{{- bos_token }}{%- endif %}"
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + SYSTEM_PROMPT.replace("\n", "\\n").replace("'", "\\'") + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


# ----------------------------------------------------------------------------
# Rendering


def user_message(query: str) -> str:
    return USER_TEMPLATE.format(query=query.strip())


def assistant_text(output_pairs) -> str:
    """The assistant turn's content in training: the target lines, each ended by a newline."""
    return render_target(output_pairs) + "\n"


def messages(query: str, output_pairs=None) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_message(query)}]
    if output_pairs is not None:
        msgs.append({"role": "assistant", "content": assistant_text(output_pairs)})
    return msgs


def render_target(output_pairs) -> str:
    """Training target text: one ``type: text`` line per pair, canonical order lex, vec, hyde."""
    ordered = sorted(output_pairs, key=lambda p: _TYPE_RANK[p[0]])  # stable within a type
    return "\n".join(f"{kind}: {text.strip()}" for kind, text in ordered)


def _hf_tokenizer(tokenizer):
    """mlx-lm wraps HF tokenizers in a TokenizerWrapper; the chat template lives on the inner one."""
    return getattr(tokenizer, "_tokenizer", tokenizer)


def is_chatml(tokenizer) -> bool:
    """The vocabulary has <|im_start|> and <|im_end|> (a token-to-id round trip: get_vocab() would
    build a dict of the whole vocabulary on every call, and this runs once per training example)."""
    hf = _hf_tokenizer(tokenizer)
    for token in _CHATML_TOKENS:
        token_id = hf.convert_tokens_to_ids(token)
        if token_id is None or hf.convert_ids_to_tokens(token_id) != token:
            return False
    return True


def chat_template(tokenizer) -> str:
    """The Jinja chat template of the contract for this tokenizer: CHAT_TEMPLATE for ChatML models,
    else the model's own (a model with no template and no ChatML tokens cannot be prompted)."""
    if is_chatml(tokenizer):
        return CHAT_TEMPLATE
    own = _hf_tokenizer(tokenizer).chat_template
    if not isinstance(own, str) or not own:
        raise ValueError("this tokenizer has neither ChatML tokens (<|im_start|>, <|im_end|>) nor a chat template")
    return own


def _apply_template(tokenizer, msgs, add_generation_prompt: bool) -> str:
    return _hf_tokenizer(tokenizer).apply_chat_template(
        msgs,
        chat_template=chat_template(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=False,  # only read by a model's own template (non-ChatML models)
    )


def render_prompt(tokenizer, query: str) -> str:
    """The generation prompt text (chat template applied, ready for the assistant's first token)."""
    return _apply_template(tokenizer, messages(query), add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """The text that closes an assistant turn in this tokenizer's template (``<|im_end|>`` for ChatML).

    Found by rendering a conversation and reading what follows the assistant content, so it works for
    any template rather than assuming ChatML.
    """
    marker = "\x00QMD-END-PROBE\x00"
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    full = _apply_template(tokenizer, probe, add_generation_prompt=False)
    tail = full[full.index(marker) + len(marker) :]
    eos = _hf_tokenizer(tokenizer).eos_token
    if eos and eos in tail:
        return tail[: tail.index(eos) + len(eos)]
    return tail.rstrip("\n") or (eos or "")


def _encode(tokenizer, text: str) -> list[int]:
    # Special tokens in the text (<|im_start|> ...) are parsed as special tokens; no BOS is added
    # because the chat template already wrote whatever the model expects at the start.
    return list(_hf_tokenizer(tokenizer).encode(text, add_special_tokens=False))


def prompt_ids(tokenizer, query: str) -> list[int]:
    return _encode(tokenizer, render_prompt(tokenizer, query))


def encode_example(tokenizer, query: str, output_pairs) -> tuple[list[int], int]:
    """Token ids of one training example and the length of its prompt part.

    Returns ``(ids, prompt_len)``: ``ids[:prompt_len]`` equals ``prompt_ids(tokenizer, query)`` and
    the loss is taken on ``ids[prompt_len:]`` (the target lines and the end-of-turn token).
    """
    prompt = prompt_ids(tokenizer, query)
    completion = _encode(tokenizer, assistant_text(output_pairs) + end_of_turn(tokenizer))
    return prompt + completion, len(prompt)


# ----------------------------------------------------------------------------
# Parsing generated text

# Chat-template control tokens: <|im_start|>, <|im_end|>, <|endoftext|>, <|fim_prefix|>, ...
LEAKED_TOKEN_RE = re.compile(r"<\|[^<>|\s]{1,40}\|>")
_THINK_BLOCK_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_LINE_TYPE_SET = frozenset(LINE_TYPES)


@dataclass
class Parsed:
    """Generated text split into valid ``(type, text)`` lines and everything else."""

    lines: list = field(default_factory=list)  # [(type, text)] in output order, text stripped
    invalid: list = field(default_factory=list)  # non-blank lines with no valid prefix
    empty: list = field(default_factory=list)  # types of lines like "lex:" with no text
    leaked: list = field(default_factory=list)  # chat-template tokens found in the text
    think: bool = False  # the text contained a <think> block


def parse_output(text: str) -> Parsed:
    """Parse model output the way QMD does, keeping what was wrong for scoring.

    A valid line is ``lex:``, ``vec:`` or ``hyde:`` (lower-case, at the start of the line after
    surrounding whitespace) followed by text. A ``<think>...</think>`` block is removed and flagged.
    Blank lines are ignored. Never raises.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    p = Parsed()
    if "<|" in text:
        p.leaked = LEAKED_TOKEN_RE.findall(text)
    if "think>" in text:
        p.think = True
        text = _THINK_BLOCK_RE.sub("", text)
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        kind, colon, body = line.partition(":")  # the type is everything before the first colon
        if not colon or kind not in _LINE_TYPE_SET:
            p.invalid.append(line)
            continue
        body = body.strip()
        if body:
            p.lines.append((kind, body))
        else:
            p.empty.append(kind)
    return p


# ----------------------------------------------------------------------------
# What QMD keeps at run time

_NON_TERM_RE = re.compile(r"[^a-z0-9\s]")
# a-z and 0-9 kept, every other byte blanked: for ASCII text one bytes.translate, a table lookup per byte
# in C (several times faster than the regex, or than str.translate, which looks each character up in a dict)
_ALNUM_BYTES = bytes(c if "0" <= chr(c) <= "9" or "a" <= chr(c) <= "z" else 32 for c in range(256))


def ascii_alnum_runs(text: str) -> list:
    """The runs of a-z/0-9 in ASCII text: re.findall("[a-z0-9]+", text)."""
    return text.encode("ascii").translate(_ALNUM_BYTES).decode("ascii").split()


def qmd_query_terms(query: str) -> tuple:
    """QMD's query terms: lower-case, everything but a-z0-9/whitespace blanked, split on whitespace."""
    low = query.lower()
    if low.isascii():
        words = low.split()
        if "".join(words).isalnum():  # nothing to blank (most queries)
            return tuple(words)
        return tuple(ascii_alnum_runs(low))
    return tuple(_NON_TERM_RE.sub(" ", low).split())


def qmd_keeps(text: str, terms) -> bool:
    """QMD drops an expansion line unless it contains one query term as a substring (no terms: keep)."""
    if not terms:
        return True
    low = text.lower()
    return any(t in low for t in terms)
