"""Rule-based scorer for query expansions: the single source of truth for reward and evaluation.

    python reward.py                      # self-test on built-in good/bad pairs; exits 1 on a wrong ordering
    python reward.py score FILE.jsonl     # score a data file ({"query", "output": [[type, text], ...]})
                                          # or an eval dump ({"query", "text"[, "truncated": true]});
                                          # prints every deduction and counts the breakage kinds

The rubric (the seeds' SCORING.md), in points:

    format      0..30   lex present 10, vec present 10, every line well formed 10 (-5 per empty line,
                        -5 per type with more than 3 lines)
    diversity   0..30   both types 10, 2+ expansions 5, lex lines distinct 5, vec lines distinct 5,
                        no line echoes the query 5 (-2 per near-duplicate pair, -5 per echo)
    hyde        0..20   only when a hyde line is present: mentions the query 5, 50-200 chars 5
                        (2 if short, 0 if long), a single hyde line 5, no word 3+ times 5 (-2 per word)
    quality     0..20   relevance 5, lex keeps key terms and has no filler 5, lex shorter than vec 5
                        (else 3), vec is natural language 5 (else 3)
    entity    -45..20   every lex line keeps a named entity 15 (some: 5, none: -30), -15 per generic
                        filler lex line, entities in every vec line 5 (some: 2)
    think       0..20   no <think> block 20
    survival  -20..0    -5 per lex/vec line that QMD would drop at run time (it shares no query term)
    language  -40..0    a query in a non-Latin script (Chinese, Russian, ...) expanded mostly in another
                        script: -40; otherwise -10 per vec/hyde line in another script
    breakage  -90..0    degenerate output (below): -30 for the first case of each kind, -10 for each
                        further case of a kind already found

    max = 120, or 140 with a hyde line; score = clamp(total / max, 0, 1)
    (line counts and the hyde length come from prompt.OUTPUT_CONTRACT and HYDE_CHARS)
    Excellent >= 0.80, Good >= 0.60, Acceptable >= 0.40, Poor >= 0.20, else Failed

Hard failures score 0: empty output, a leaked chat-template token (<|im_end|>, ...), any non-blank
line without a lex:/vec:/hyde: prefix, and output cut by the token cap (`score(..., truncated=True)`:
generation reached max_tokens without the end token; QMD would get a half line, and GRPO must not learn
that running to the cap pays - TRL's mask_truncated_completions drops such completions for that reason).

Breakage. A model that loops or pads can satisfy every dimension above (the demo adapter wrote
`lex: line line line` for "who wrote this line" and scored 91%), and GRPO finds such holes. Each kind
costs 30 points, more than the 28 (of 140) between a perfect score and the Excellent line, so any one
of them leaves Excellent. Score.issues lists the kinds found; eval.py counts them. Kind, rule, and why:

    repeated words        a lex/vec line uses a word 3+ times, or a lex line doubles it ("starter
                          starter"), beyond what the query repeats. QMD ANDs lex terms and embeds vec
                          lines: a repeated word adds nothing and pushes the line's meaning to one word.
    near-duplicate lines  two lex (vec) lines whose word sets differ by under 2 (3) words, or by one
                          word and its plural (`jwt token expiry` / `... expiry time` / `... times`);
                          between lex lines, numbers the query lacks do not count as a difference
                          (`HIPAA 101` / `HIPAA 401`). QMD runs every line: a near copy spends a search
                          on the same documents.
    query plus filler     a lex/vec line that is the query plus only filler words (guide, tips,
                          tutorial, explained, information, ...). BM25 then also demands "tips".
    token chain           a hyphen/underscore/dot chain that repeats a part (commit-local-origin-origin,
                          python_match_match_case) or two doubled chains (blame-blame revs-revs): such a
                          token matches no document, and ANDed with the rest it empties the lex result.
    looping hyde          hyde uses a word 4+ times, a 4-word phrase twice or a 3-word phrase three times:
                          a looping passage embeds as the loop, far from any real document.
    shuffled-query hyde   hyde adds at most one word to the query's own: its embedding is the query's, so
                          the hypothetical-document search adds nothing.
    off-topic lex/vec     a lex/vec line sharing no content word with the query (key terms split at
                          punctuation, substring match as QMD does), nor a word with an on-topic line of
                          the same output (a paraphrase tied to one stays). QMD drops it, or worse (when
                          it shares a stop word) searches for something else.
    unrelated lex words   a lex line pairing the query's words with 2+ words that nothing ties to the query
                          ("sqlite banana bicycle"): not in the query, in no other line, never in one
                          training example (data/*.jsonl) with a query word or with a specific word of
                          the output, nor with each other. ANDed, they make the line match nothing.
    placeholder           template text: {query}, [KEYWORDS], <insert ...>, lorem ipsum, keyword1, the
                          prompt's own words ("hypothetical document", "natural language reformulation"),
                          a TODO/TBD/FIXME marker as a whole line or its last word. It matches no document.
    invented number       a number, version or code in a lex line (python 4.2, PEP-9921, RFC 7731) that
                          the query lacks, no other line gives, and no training example has with the
                          query's words. BM25 requires it, so it narrows the search to the wrong documents.

An off-topic line and a lex line with unrelated words are also left out of every other dimension, as if
absent, so keeping one always costs more than leaving it out. Two rules (unrelated words, invented
numbers) need to know what is related without a language model: they use co-occurrence in the training
data, so they cannot judge a query whose words the data lacks, and they miss an unrelated word that the
data happens to pair with the query. Left out of the training data, a data example is flagged by them
about 1% of the time each (false alarms on held-out queries; measured leaving each example out in turn).
What the rubric cannot see: whether a fact is true, whether a synonym is right, how documents rank.

Named entities follow the rubric's heuristics (acronyms, capitalised words after the first, words with
. + # @ _ or inner capitals, and the word after an entity). When a query has none, its key terms (words
that are not stop words) stand in for them, so "auth config" must still keep "auth" or "config".
CJK text has no spaces: a CJK run matches a line when they share any two-character substring.

Speed matters (GRPO scores every sample): query analysis is cached, the hot path is plain string
operations with every breakage check behind a cheap gate, and nothing here imports MLX. Nothing
raises: any input returns a value in [0, 1].
"""

from __future__ import annotations

import json
import re
import sys
from collections import (
    Counter,
    _count_elements,  # the C loop behind Counter.update
    defaultdict,
)
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import NamedTuple

import click

from prompt import CONTRACT, HYDE_CHARS, LINE_TYPES, ascii_alnum_runs, parse_output, qmd_query_terms

# The counts and lengths the rubric checks come from the output contract (prompt.OUTPUT_CONTRACT),
# the same table the teacher's instructions and QMD's grammar are built from.
MAX_LINES = {t: c.max_lines for t, c in CONTRACT.items()}  # lex 3, vec 3, hyde 1
HYDE_MIN, HYDE_MAX = HYDE_CHARS  # 50, 200 characters

# ----------------------------------------------------------------------------
# Word lists

# Frequent function words of the other languages in the data: never key terms, never "repetition".
FOREIGN_FUNCTION_WORDS = frozenset(
    "der die das und ist ein eine mit von zu den im für wie was nicht"
    " el la los las de del y en un una para por con que como es qué cómo"
    " le les des et est une pour par avec comment dans du au"
    " o os as e do da em um uma com"
    " и в не на что как с по для это".split()
)
STOPWORDS = (
    frozenset(
        # English question and function words (the rubric's KEY_TERM_STOPWORDS, extended)
        "what is how to the a an in on for of and or with my your do does can i me we who where when why "
        "which find get show tell about are was were be been it its this that these those vs versus from "
        "by at as not no without into than then there their our us you he she they them his her if so "
        "should would could will just any some all more most best way ways use using".split()
    )
    | FOREIGN_FUNCTION_WORDS
)
GENERIC_LEX_PHRASES = (
    "find information about",
    "search for",
    "look up",
    "get information",
    "learn about",
    "information on",
    "details about",
    "find out about",
    "what is",
    "how to",
    "guide to",
    "help with",
)
# Lex lines that open like prose rather than keywords ("understanding how ...").
FILLER_LEADS = (
    "understanding ",
    "introduction ",
    "overview ",
    "basics ",
    "tutorial ",
    "how ",
    "what ",
    "why ",
    "learn ",
)
_COMMON_WORDS = ("the", "a", "an", "is", "are", "to", "for", "of", "in", "and", "or")  # HYDE_STOPWORDS, English
HYDE_STOPWORDS = frozenset("the a an is are to for of in and or".split()) | FOREIGN_FUNCTION_WORDS

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_RUN_RE = re.compile(f"[{_CJK}]+")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
# Letters of scripts other than Latin (Cyrillic, Greek, Arabic, Hebrew, Thai, Devanagari, Hangul, CJK)
_NONLATIN_RE = re.compile(f"[\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u0dff\u0e00-\u0e7f\uac00-\ud7af{_CJK}]")
_STRIP = ".,!?:;()[]{}\"'`“”‘’«»"
_STRIP_SP = _STRIP + " "
_ENTITY_CHARS = frozenset(".+#@_")
_LINE_TYPE_SET = frozenset(LINE_TYPES)
_PARTS_RE = re.compile(r"[^\W_]+")
_AZ09_RE = re.compile(r"[a-z0-9]")

RATINGS = ((0.80, "Excellent"), (0.60, "Good"), (0.40, "Acceptable"), (0.20, "Poor"), (0.0, "Failed"))


# ----------------------------------------------------------------------------
# Query analysis (cached: GRPO scores G samples per query)


def _is_entity_word(word: str, low: str, index: int, prev_entity: bool) -> bool:
    """`low` is word.lower()."""
    if len(word) >= 2 and word.isupper():  # acronyms: TDS, API, GPU
        return True
    if low in STOPWORDS:
        return False
    if index > 0 and word[0].isupper():  # capitalised words after the first: React, Lisbon
        return True
    if len(word) >= 2 and (not _ENTITY_CHARS.isdisjoint(word) or "-" in word[1:] or "/" in word):
        return True  # technical terms: node.js, C++, C#, snake_case, USB-C, TCP/IP
    rest = word[1:]
    if rest != rest.lower():  # inner capitals: JavaScript, useEffect, iPhone
        return True
    return prev_entity  # the word after an entity: "TDS motorsports"


def _term(low: str):
    """A matchable term from a lower-case word: the word, or for CJK runs a tuple of character bigrams."""
    if not low.isascii() and _CJK_RE.search(low):
        parts = []
        for run in _CJK_RUN_RE.findall(low):
            parts.extend(run[i : i + 2] for i in range(max(1, len(run) - 1)))
        rest = _CJK_RUN_RE.sub(" ", low).split()
        return tuple(parts + [r for r in rest if len(r) >= 2])
    return low


class QueryInfo(NamedTuple):  # immutable (it is cached) and cheap to build
    norm: str  # lower-case, single spaces, no trailing punctuation: for echo detection
    norm_words: int  # words in norm
    plain: bool  # every term is a plain string (no CJK bigram tuples): matched with one C-level scan each
    entities: tuple  # terms that lex lines must keep (named entities, else key terms)
    named: bool  # True when `entities` are real named entities
    key_terms: tuple  # content words of the query
    qmd_terms: tuple  # QMD's run-time filter terms
    nonlatin: bool  # the query is (partly) written in a non-Latin script
    low: str  # the query in lower case
    words: tuple  # its lower-case words, punctuation stripped (repetition allowances)
    word_set: frozenset
    topic: tuple  # what an on-topic line must share: key terms split at punctuation (ctx.Done -> ctx, done)
    key_qmd: bool  # every key term holds one of QMD's terms: a line with a key term survives QMD's filter


def _unique(items: list) -> tuple:
    """The items without repeats, in first-seen order. A query's few terms rarely repeat, and a set's
    length says so at under half the cost of dict.fromkeys (this runs for every query, cold in benchmarks)."""
    return tuple(items) if len(set(items)) == len(items) else tuple(dict.fromkeys(items))


@lru_cache(maxsize=65536)
def analyze_query(query: str) -> QueryInfo:
    words = query.split()
    if query.isascii() and "".join(words).isalnum():
        # ASCII words of letters and digits only (three quarters of the data's queries): nothing to strip
        # or blank, no exclusion, every non-stop word of 2+ characters a key term and its own topic term.
        # The same QueryInfo as the loop below builds, without its per-word work.
        lower = query.islower()
        qlow = query if lower else query.lower()
        low_words = tuple(words if lower else qlow.split())  # the same words: lower() keeps ASCII whitespace
        key_terms = _unique([w for w in low_words if len(w) >= 2 and w not in STOPWORDS])
        entities = []
        if not lower:  # an entity needs a capital to start (in lower case: only after one)
            prev = False
            for i, (raw, low) in enumerate(zip(words, low_words)):
                prev = (prev and low not in STOPWORDS) if raw == low else _is_entity_word(raw, low, i, prev)
                if prev:
                    entities.append(low)
        return QueryInfo(  # positional: a NamedTuple's keyword call costs twice its positional one
            " ".join(low_words),  # norm
            len(low_words),  # norm_words
            True,  # plain
            _unique(entities) if entities else key_terms,  # entities
            bool(entities),  # named
            key_terms,  # key_terms
            low_words,  # qmd_terms
            False,  # nonlatin
            qlow,  # low
            low_words,  # words
            frozenset(low_words),  # word_set
            key_terms,  # topic
            bool(key_terms),  # key_qmd
        )
    entities, key_terms, low_words, topic = [], [], [], []
    prev, i, key_qmd = False, 0, True
    for raw in words:
        if raw.isascii() and raw.isalpha() and raw.islower():  # a plain ASCII word: the branches below, short
            stop = raw in STOPWORDS
            is_ent = prev and not stop
            low_words.append(raw)
            if is_ent:
                entities.append(raw)
            if not stop and len(raw) >= 2:
                key_terms.append(raw)
                topic.append(raw)
            prev = is_ent
            i += 1
            continue
        if raw[0] == "-" and len(raw) > 1:  # an exclusion ("-car") is not something to keep
            continue
        w = raw.strip(_STRIP)
        if not w:
            continue
        if w.islower() and w.isalpha():  # a plain lower-case word (most): an entity only after one
            low, is_ent = w, prev and w not in STOPWORDS
        else:
            low = w.lower()
            is_ent = _is_entity_word(w, low, i, prev)
        low_words.append(low)
        term = low if low.isascii() else _term(low)
        if is_ent:
            entities.append(term)
        if low not in STOPWORDS and (len(w) >= 2 or _CJK_RE.search(w)):
            key_terms.append(term)
            if key_qmd and not (low.isascii() and low.isalnum()) and (term is not low or not _AZ09_RE.search(low)):
                key_qmd = False
            if term is not low:  # CJK bigrams
                topic.append(term)
            elif low.isalnum():
                topic.append(low)
            else:  # split at punctuation: ctx.done -> ctx, done
                parts = ascii_alnum_runs(low) if low.isascii() else _PARTS_RE.findall(low)
                topic.extend([x for x in parts if len(x) >= 2] or [low])
        prev = is_ent
        i += 1
    if query.isascii():  # most queries: no per-character scan needed
        nonlatin = False
    else:
        n_nonlatin = sum(map(str.isalpha, _NONLATIN_RE.findall(query)))  # map: the per-character loop in C
        n_letters = sum(map(str.isalpha, query))
        nonlatin = n_nonlatin >= 2 or (n_letters > 0 and n_nonlatin * 2 > n_letters)
    key_terms = _unique(key_terms)
    qlow = query.lower()
    qwords = qlow.split()
    norm = " ".join(qwords).strip(_STRIP_SP)  # _norm(query)
    # prompt.qmd_query_terms(query), without lowering and splitting the query again when nothing is blanked
    qmd_terms = tuple(qwords) if qlow.isascii() and "".join(qwords).isalnum() else qmd_query_terms(query)
    return QueryInfo(  # positional: a NamedTuple's keyword call costs twice its positional one
        norm,  # norm
        len(norm.split()),  # norm_words
        query.isascii() or not _CJK_RE.search(query),  # plain
        _unique(entities) if entities else key_terms,  # entities
        bool(entities),  # named
        key_terms,  # key_terms
        qmd_terms,  # qmd_terms
        nonlatin,  # nonlatin
        qlow,  # low
        tuple(low_words),  # words
        frozenset(low_words),  # word_set
        _unique(topic),  # topic
        key_qmd and bool(key_terms),  # key_qmd
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(_STRIP_SP)


def _has_term(low: str, terms) -> bool:
    for t in terms:
        if isinstance(t, str):
            if t in low:
                return True
        elif any(b in low for b in t):
            return True
    return False


def _word_count(text: str) -> float:
    if text.isascii() or not _CJK_RE.search(text):
        return len(text.split())
    cjk = len(_CJK_RE.findall(text))
    return cjk / 2 + len(_CJK_RUN_RE.sub(" ", text).split())


def is_generic_lex(low: str) -> bool:
    """A lex line that is a filler phrase with (almost) nothing specific left: "find information about"."""
    # Each phrase holds one of these pieces (tests: every phrase alone is generic), so a line holding none
    # holds no phrase: eight `in` tests rule out most lines at half the cost of one regex alternation,
    # which tries every phrase at each position that starts one.
    if not (
        "about" in low
        or "informat" in low
        or "search f" in low
        or "look u" in low
        or "what i" in low
        or "how t" in low
        or "guide t" in low
        or "help w" in low
    ):
        return False
    for phrase in GENERIC_LEX_PHRASES:
        if phrase in low:
            remaining = low.replace(phrase, " ")
            if len("".join(remaining.split())) < 3:
                return True
    return False


# ----------------------------------------------------------------------------
# Breakage: degenerate expansions that must not score Excellent (see the rubric in the docstring)

BREAKAGE_POINTS = 30  # the first case of a kind: 140 - 30 < 0.80 x 140, so any one kind leaves Excellent
BREAKAGE_MORE = 10  # each further case of the same kind
BREAKAGE_CAP = 90
SPECIFIC_DF = 20  # a word in at most this many training examples says what an output is about
# Words that add nothing to a keyword or vector search when tacked onto the query.
FILLER_WORDS = frozenset(
    # not "query", "search", "topics", "summary", "quick": in the data they are real terms (a Dataview
    # query, Kafka topics, a handoff summary, quick recipes)
    "guide guides tutorial tutorials tips tricks info information details overview explained explanation "
    "basics help examples meaning introduction intro things stuff article articles resources online "
    "complete ultimate general related various everything detailed facts thing "
    "guía información informationen anleitung tipps erklärung informations conseils explication"
    " руководство информация".split()
)
# Placeholders and template text: an unfilled template slot ({query}, [KEYWORDS], <insert ...>), lorem
# ipsum, the prompt's own words for the line types, a to-do marker as a whole line or its last word (not
# org-mode's TODO keyword). The patterns run only on lines holding a trigger character or word.
_SLOT = r"(?:query|keywords?|topic|terms?|subject|entity|placeholder|search[ _]?(?:query|terms?)|user[ _]?query)"
_SLOT_RE = re.compile(
    rf"\{{\{{?\s*{_SLOT}\s*\}}\}}?|\[\s*(?:{_SLOT}|insert\b[^\]]*|your\b[^\]]*)\s*\]|<\s*(?:{_SLOT}|insert\b[^>]*|your\b[^>]*)\s*>"
)
_PHRASE_RE = re.compile(
    r"lorem ipsum|\bkeyword[ _]?\d\b|\bhypothetical (?:document|passage)|\bnatural[- ]language (?:reformulation|version|rewrite)"
    r"|\bkeyword query for\b|\b(?:your|the) (?:search )?query here\b|\bquery goes here\b|\binsert (?:query|keywords?|text) here\b"
)
_PHRASE_TRIGGERS = frozenset(
    "lorem hypothetical natural natural-language keyword keywords keyword1 keyword2 keyword3 keyword_1 keyword_2 "
    "query insert".split()
)
_MARKERS = ("TODO", "TBD", "FIXME", "XXX")
# words of a line (lower case; hyde: punctuation stripped) that call for the placeholder patterns
_PLACE_WORDS = _PHRASE_TRIGGERS | frozenset(
    ["todo", "todo:", "tbd", "tbd:", "fixme", "fixme:", "xxx", "xxx:", "...", "…", ""]
)
# Numbers, versions and codes in a lex line: 3.10, 27, 100w, v2.3, PEP-9921, CVE-2014-0160
_NUMBER_RE = re.compile(r"v?\d+(?:[.,:]\d+)*[a-z%]{0,3}|[a-z]{2,}-\d+(?:-\d+)*")
_DIGIT_RE = re.compile(r"[0-9]")  # ASCII digits: a cheap gate (\d looks up each character)
_WORD_RE = re.compile(r"[^\W\d_]{3,}")  # letters only (any script), 3+: the units of relatedness
_CHAIN_SEPS = ("-", "_", ".")


@lru_cache(maxsize=1)
def _lexicon() -> dict:
    """Which training examples each word (5-letter prefix) or number occurs in: {key: bit mask, bit i
    set when example i has it}. Ints, not sets: one AND tests co-occurrence, and the garbage collector
    has nothing to traverse.

    Built once from data/*.jsonl beside this file (empty without it). Two rules need it to tell a
    related term from an unrelated one without a language model: two words are related when some
    hand-written example uses both."""
    from pathlib import Path

    ids, i = {}, 0
    for path in sorted((Path(__file__).resolve().parent / "data").glob("*.jsonl")):
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(raw)
                text = rec["query"] + "\n" + "\n".join(t for _, t in rec["output"])
            except (ValueError, KeyError, TypeError):
                continue
            for key in _keys(text.lower()):
                ids.setdefault(key, []).append(i)
            i += 1
    return {k: sum(1 << j for j in v) for k, v in ids.items()}


def _keys(low: str) -> set:
    """Lexicon keys of lower-case text: 5-letter prefixes of its words, and its number tokens."""
    keys = {w[:5] for w in _WORD_RE.findall(low) if w not in STOPWORDS}
    if _DIGIT_RE.search(low):
        keys.update(t for t in map(str.strip, low.split(), repeat(_STRIP)) if _NUMBER_RE.fullmatch(t))
    return keys


@lru_cache(maxsize=65536)
def _query_mask(query_low: str) -> int:
    """The examples that hold any of the query's words or numbers (0: the lexicon knows none of them)."""
    lex = _lexicon()
    mask = 0
    words = query_low.split()
    if all(map(str.isalpha, words)):  # plain words (most queries): their keys without the regex
        keys = {w[:5] for w in words if len(w) >= 3 and w not in STOPWORDS}
    else:
        keys = _keys(query_low)
    for k in keys:
        mask |= lex.get(k, 0)
    return mask


def clear_query_caches() -> None:
    """Forget every per-query analysis (benchmarks measure scoring with cold caches)."""
    analyze_query.cache_clear()
    _query_mask.cache_clear()


def _chain_problem(tok: str):
    """'chain' for a hyphen/underscore/dot chain that repeats a part (commit-local-origin-origin),
    'double' for a two-part doubling (blame-blame, proton-proton: only soup when there are two), else None."""
    for sep in _CHAIN_SEPS:
        if sep not in tok:
            continue
        parts = [x for x in tok.split(sep) if x and not x.isdigit()]
        if len(parts) < 2 or len(set(parts)) == len(parts):
            continue
        if max(Counter(parts).values()) >= 3:
            return "chain"
        if any(a == b for a, b in zip(parts, parts[1:])):
            return "chain" if len(parts) >= 3 else "double"
    return None


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


# ----------------------------------------------------------------------------
# Scoring


@dataclass(slots=True)  # slots: cheaper to build and read (one is built per scored sample)
class Score:
    """Detailed breakdown of one expansion's score."""

    query: str
    dimensions: dict = field(default_factory=dict)  # name -> points
    deductions: list = field(default_factory=list)  # [(dimension, points lost, reason)]
    total: float = 0.0
    max: float = 120.0
    hard_failure: str | None = None
    lines: list = field(default_factory=list)  # parsed (type, text) lines
    qmd_kept: int = 0  # lex/vec lines QMD keeps at run time
    qmd_total: int = 0  # lex/vec lines in the output
    issues: list = field(default_factory=list)  # breakage kinds found, each once, in BREAKAGE_KINDS order

    @property
    def reward(self) -> float:
        if self.hard_failure is not None or self.max <= 0:
            return 0.0
        return min(1.0, max(0.0, self.total / self.max))

    @property
    def percentage(self) -> float:
        return round(100.0 * self.reward, 1)

    @property
    def rating(self) -> str:
        r = self.reward
        return next(name for bound, name in RATINGS if r >= bound)

    @property
    def format_valid(self) -> bool:
        """QMD-usable: no hard failure and at least one lex and one vec line."""
        kinds = {k for k, _ in self.lines}
        return self.hard_failure is None and "lex" in kinds and "vec" in kinds

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "score": round(self.reward, 4),
            "percentage": self.percentage,
            "rating": self.rating,
            "total": self.total,
            "max": self.max,
            "dimensions": dict(self.dimensions),
            "deductions": [{"dimension": d, "points": p, "reason": r} for d, p, r in self.deductions],
            "hard_failure": self.hard_failure,
            "format_valid": self.format_valid,
            "qmd_kept": self.qmd_kept,
            "qmd_total": self.qmd_total,
            "issues": list(self.issues),
        }


def score(query: str, output: str, truncated: bool = False) -> Score:
    """Score one model output (raw generated text) for one query. Never raises.

    `truncated`: generation stopped at max_tokens without the end token. Such an output is a hard
    failure whatever its text: QMD would get a cut line, and GRPO must not learn that running to the
    cap pays (TRL's mask_truncated_completions drops such completions from the loss for the same reason)."""
    try:
        return _score(query if isinstance(query, str) else str(query), output, bool(truncated))
    except Exception as exc:  # noqa: BLE001 - a scorer bug must not crash a training run
        s = Score(query=str(query))
        s.hard_failure = f"scorer error: {type(exc).__name__}: {exc}"
        s.issues = ["scorer error"]
        return s


def reward(query: str, output: str, truncated: bool = False) -> float:
    """Reward in [0, 1] for RL."""
    return score(query, output, truncated).reward


def score_batch(queries, outputs, truncated=None) -> list:
    """Rewards for parallel lists of queries and outputs (and, optionally, truncation flags)."""
    outputs = list(outputs)
    flags = [False] * len(outputs) if truncated is None else truncated
    return [score(q, o, t).reward for q, o, t in zip(queries, outputs, flags, strict=True)]


def _repeated_words(q: QueryInfo, kind: str, text: str, words: list):
    """A word repeated within a lex/vec line beyond what the query repeats: 3+ times, or (lex) doubled as
    written ("starter starter"; not "prompt PROMPT"). None when there is none."""
    for w, n in Counter(map(str.strip, words, repeat(_STRIP))).items():
        if n < 2 or w in STOPWORDS or not any(map(str.isalpha, w)):
            continue
        qn = q.words.count(w)
        if n >= 3 and n > qn:
            return f"{w!r} {n} times in a {kind} line"
        if kind == "lex" and qn < 2:
            raw = text.split()
            if any(a == b and a.lower() == w for a, b in zip(raw, raw[1:])):
                return f"{w!r} doubled in a lex line"
    return None


def _chain(q: QueryInfo, words: list):
    """A hyphen/underscore/dot chain that repeats a part, or token soup (two doubled chains). None if neither."""
    doubles = []
    for w in words:
        if w.isalnum():  # one C call rules out a plain word
            continue
        w = w.strip(_STRIP)
        if w in q.low:
            continue
        why = _chain_problem(w)
        if why == "chain":
            return f"{w!r} repeats a part"
        if why == "double":
            doubles.append(w)
    return f"token soup: {' '.join(doubles)!r}" if len(doubles) >= 2 else None


def _invented_number(q: QueryInfo, low: str, words: list, full_low: str, long=None, i: int = -1):
    """A number, version or code in a lex line that the query lacks, that no other line gives, and that no
    training example has with the query's words. None if there is none (or the query is unknown).
    `long`: a _LongOutput for a long output (then `i` is this line's index, and `full_low` unused)."""
    for w in words:
        if w.isalpha():  # one C call rules out a plain word
            continue
        w = w.strip(_STRIP)
        if w in q.low or not _NUMBER_RE.fullmatch(w):
            continue  # the query's own number
        if long.elsewhere(w, i) if long is not None else full_low.count(w) > low.count(w):
            continue  # one another line gives too
        qmask = _query_mask(q.low)
        if qmask and not _lexicon().get(w, 0) & qmask:
            return f"{w!r} in a lex line: not in the query, never seen with its words"
    return None


def _unrelated_words(q: QueryInfo, low: str, extra: set, full_low: str, long=None) -> list:
    """Words of a lex line that nothing ties to the query ("sqlite banana bicycle"): plain words that are
    not the query's, not in any other line of the output, and in no training example together with a
    query word or with a specific word (one in at most SPECIFIC_DF examples) of the output, nor with
    each other. `extra`: the line's words minus the query's and stop words. Exclusions (-word) are meant
    to be unrelated and are left alone. `long`: a _LongOutput for a long output (`full_low` unused).

    A line is only judged when two words of `extra`, as written, have their first four letters once in
    the output (the gate). The gate and the candidates share their counts (for a plain word they are
    the same count), and the loop stops as soon as fewer than two of either can be reached."""
    qlow = q.low
    gate, cands, left = 0, [], len(extra)  # cands: (word, as written)
    for raw in extra:
        if gate + left < 2 or len(cands) + left < 2:
            return []
        left -= 1
        single = long.once(raw[:4]) if long is not None else full_low.count(raw[:4]) == 1
        gate += single
        w = raw
        if not w.isalpha():
            if w[0] == "-" or not (w := w.strip(_STRIP)).isalpha():
                continue  # an exclusion; numbers and code are not words
            if w[:4] != raw[:4]:
                single = long.once(w[:4]) if long is not None else full_low.count(w[:4]) == 1
        if single and len(w) >= 3 and w[:4] not in qlow:
            cands.append((w, raw))  # not the query's, and no other line has it (nor this one twice)
    if gate < 2 or len(cands) < 2:
        return []
    qmask = _query_mask(qlow)
    if not qmask:  # the query's words are unknown to the lexicon: no judgement possible
        return []
    lex = _lexicon()
    # seen in the data, never with a query word
    bad = [(w, raw, m) for w, raw in cands if (m := lex.get(w[:5], 0)) and not m & qmask]
    if len(bad) < 2:
        return []
    own = {w[:5] for w, _ in cands}
    if long is not None:
        specific = long.specific(own)
    else:
        specific = 0  # the examples holding a specific word of the output
        for k in _keys(full_low) - own:
            if (m := lex.get(k, 0)) and m.bit_count() <= SPECIFIC_DF:
                specific |= m
    bad = [(w, raw, m) for w, raw, m in bad if not m & specific]
    # in line order (a set's order changes with the hash seed); two candidates never share a position,
    # as one would then hold the other's first letters and they would not occur once
    return [
        w for _, w in sorted((low.find(raw), w) for w, raw, m in bad if not any(m & o for v, _, o in bad if v != w))
    ]


LONG_OUTPUT = 24  # from this many lines on, an output's substring questions go through _LongOutput


class _LongOutput:
    """Questions about the whole output of a long file, answered without a scan of the output each.

    For a few lines, str.count over the joined output is the fastest answer; for thousands of lines it
    makes scoring quadratic (one scan per line). Here each line's distinct k-character substrings are
    indexed once (k = 1..4, built when first asked), so a question costs a lookup and a look at one or
    two lines. The answers are str.count's: the output is its lines joined by newlines and no question
    holds a newline, so a count over the output is the sum of the counts over its lines."""

    def __init__(self, lows: list):
        self.lows = lows
        self.grams = {}  # k -> {substring of k characters: indices of the lines holding it}
        self.holders = {}  # text -> up to two indices of lines holding it
        self.spec = None  # (key -> mask, OR of all masks, bit -> how many masks have it), built when asked

    def _lines_with(self, t: str) -> list:
        """Up to two lines (indices) that contain t."""
        got = self.holders.get(t)
        if got is None:
            k = min(len(t), 4)
            idx = self.grams.get(k)
            if idx is None:
                idx = self.grams[k] = defaultdict(list)
                for j, low in enumerate(self.lows):
                    for g in {low[p : p + k] for p in range(len(low) - k + 1)}:
                        idx[g].append(j)
            cands = idx.get(t[:k], ())
            if len(t) <= 4:
                got = list(cands[:2])
            else:
                got = []
                for j in cands:
                    if t in self.lows[j]:
                        got.append(j)
                        if len(got) == 2:
                            break
            self.holders[t] = got
        return got

    def once(self, t: str) -> bool:
        """The same as full_low.count(t) == 1, for a non-empty t."""
        got = self._lines_with(t)
        return len(got) == 1 and self.lows[got[0]].count(t) == 1

    def elsewhere(self, t: str, i: int) -> bool:
        """Whether a line other than line i holds t: full_low.count(t) > lows[i].count(t)."""
        return any(j != i for j in self._lines_with(t))

    def specific(self, own: set) -> int:
        """The OR of the lexicon masks of the output's keys outside `own` that are specific (in at most
        SPECIFIC_DF examples). OR cannot be undone, so each bit counts the masks that have it: a bit
        held only by masks of `own` keys is cleared."""
        if self.spec is None:
            lex, spec, every, holders = _lexicon(), {}, 0, {}
            for k in _keys("\n".join(self.lows)):
                if (m := lex.get(k, 0)) and m.bit_count() <= SPECIFIC_DF:
                    spec[k] = m
                    every |= m
                    for b in _bits(m):
                        holders[b] = holders.get(b, 0) + 1
            self.spec = (spec, every, holders)
        spec, every, holders = self.spec
        mine = {}
        for k in own:
            if k in spec:
                for b in _bits(spec[k]):
                    mine[b] = mine.get(b, 0) + 1
        for b, c in mine.items():
            if holders[b] == c:
                every &= ~(1 << b)
        return every


def _bits(m: int):
    while m:
        low = m & -m
        yield low.bit_length() - 1
        m ^= low


def _off_topic(off: list, lows: list, on: list) -> set:
    """Of the lex/vec lines `off` (indices) that share no content word with the query, those that share
    none with an on-topic line (`on`) of the same output either: a paraphrase tied to an on-topic line
    stays. CJK bigrams are too common ("如何") to vouch for a line, so a CJK line must share one with the query."""
    tied = set()  # 5-letter prefixes of the words of the on-topic lines
    for i in on:
        tied.update(w[:5] for w in _WORD_RE.findall(lows[i]) if w not in STOPWORDS)
    return {
        i
        for i in off
        if _CJK_RE.search(lows[i]) or tied.isdisjoint(w[:5] for w in _WORD_RE.findall(lows[i]) if w not in STOPWORDS)
    }


def _placeholder(q: QueryInfo, text: str, low: str, words: list):
    """Template text in one line, or None. Each pattern runs only when its trigger is present."""
    m = None
    if "{" in low or "[" in low or "<" in low:
        m = _SLOT_RE.search(low)
    if m is None and not _PHRASE_TRIGGERS.isdisjoint(words):
        m = _PHRASE_RE.search(low)
    if m is not None:
        hit = m.group().strip()
    elif text.endswith(_MARKERS) or text.startswith(_MARKERS):
        parts = text.split()  # the whole line or its last word ("Sarah budget TODO"), or "TODO: ..."
        if parts[-1] in _MARKERS:
            hit = parts[-1]
        elif parts[0].rstrip(":") in _MARKERS and (len(parts) == 1 or parts[0].endswith(":")):
            hit = parts[0]
        else:
            return None
    elif text in ("...", "…"):
        hit = text
    else:
        return None
    return None if hit.lower() in q.low else hit


def _hyde_breakage(q: QueryInfo, h: str, words: list, counts: dict, top: int, found: list) -> None:
    """A hyde line that loops (a word 4+ times, a 4-word phrase twice, a 3-word phrase three times) or that
    is only the query's words shuffled. `words`: its lower-case words; `counts`: their counts, stripped;
    `top`: the largest count (0: no loop possible, the caller checked)."""
    loop = None
    if top >= 4:
        loop = next(
            (w for w, n in counts.items() if n >= 4 and w not in HYDE_STOPWORDS and any(map(str.isalpha, w))), None
        )
    if loop:
        found.append(("looping hyde", f"{loop!r} {counts[loop]} times in hyde"))
    elif top >= 2 and len(words) - len(counts) >= 4:
        ts = [t for t in map(str.strip, words, repeat(_STRIP)) if t]
        grams3 = {}
        _count_elements(grams3, zip(ts, ts[1:], ts[2:]))
        if len(set(zip(ts, ts[1:], ts[2:], ts[3:]))) < len(ts) - 3 or max(grams3.values(), default=0) >= 3:
            found.append(("looping hyde", "a phrase repeats in hyde"))
    if len(q.key_terms) >= 2 and len(counts) <= 2 * len(q.words) + 4 and not _CJK_RE.search(h):
        new = [w for w in counts if w and w not in STOPWORDS and w not in q.word_set]
        if len(new) <= 1:
            found.append(("shuffled-query hyde", "hyde adds nothing to the query's own words"))


def _dup_set(low: str, ws: set, plain: bool) -> set:
    """The tokens of a line for the near-duplicate check: its words, or for CJK text its characters."""
    return set(_TOKEN_RE.findall(low)) if not plain and _CJK_RE.search(low) else ws


def _less_new_numbers(q: QueryInfo, toks: set) -> set:
    """Tokens less the numbers, versions and codes that the query lacks, which the near-duplicate check
    leaves out of lex lines. An added number does not make a different search (QMD finds the same
    documents, or none when BM25 requires the number), and without this GRPO learned to dodge the check
    by numbering copies of a line (`HIPAA 101` / `HIPAA 401`). Lex lines only, as the invented-number
    rule: BM25 is where a number narrows the search (and it keeps the check cheap). Applied to a pair's
    symmetric difference, the same as applying it to both lines first: (A - N) ^ (B - N) == (A ^ B) - N."""
    if not _DIGIT_RE.search(" ".join(toks)):  # one scan: most differences hold no digit
        return toks
    qlow = q.low
    new = {t for t in toks if not t.isalpha() and _NUMBER_RE.fullmatch(u := t.strip(_STRIP)) and u not in qlow}
    return toks - new if new else toks


def _plural_pair(diff: set) -> bool:
    a, b = diff
    return _stem(a) == _stem(b)


def _near_duplicates(sets, min_diff: int, q: QueryInfo | None = None) -> int:
    """Pairs of token sets that differ by fewer than `min_diff` tokens (or are equal), or by one word and
    its plural ("expiry time" / "expiry times"). Every pair: the reference, and the faster choice for a
    few lines (an output has at most 3 of each type unless it is broken)."""
    dups = 0
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            diff = sets[i] ^ sets[j]
            if q is not None and len(diff) >= min_diff:  # numbers the query lacks make no difference
                diff = _less_new_numbers(q, diff)
            if len(diff) < min_diff:
                dups += 1
            elif len(diff) == 2:
                dups += _plural_pair(diff)
    return dups


PAIRWISE_MAX = 12  # up to this many lines of a type, near-duplicates are counted pair by pair


def _near_duplicates_fast(sets, min_diff: int) -> int:
    """The count of _near_duplicates in time linear in the number of sets (times a line's words, squared
    at worst), for users who point reward.py at a file of thousands of lines.

    A pair counts when its symmetric difference has d < min_diff tokens, or d == 2 and the two are a word
    and its plural. With min_diff <= 3 only d <= 2 matters, and such a pair is one of: equal sets (d=0);
    V = U + {x} (d=1); a swap U = C + {a}, V = C + {b} (d=2, same size; the core C is unique to the pair);
    V = U + {x, y} (d=2). Equal sets are counted by multiplicity, the other kinds by looking up what a
    set becomes with one or two tokens removed. Lookups go through the sum of the tokens' hashes (an
    int, no new set per removal) and every hit is confirmed on the sets themselves, so a hash collision
    cannot change the count. Swaps are counted per core, as pairs within each core's group, so a thousand
    lines that all differ in one word cost a thousand lookups, not half a million pairs."""
    if min_diff not in (2, 3):  # the rubric's values; the reference handles any other
        return _near_duplicates(sets, min_diff)
    mult = {}
    for s in sets:
        f = frozenset(s)
        mult[f] = mult.get(f, 0) + 1
    dups = sum(m * (m - 1) // 2 for m in mult.values())
    if len(mult) < 2:
        return dups
    uniq = list(mult)
    hsum = [sum(map(hash, f)) for f in uniq]
    by_key = {}  # (size, hash sum) -> indices into uniq
    by_size = {}  # size -> indices into uniq
    for u, f in enumerate(uniq):
        by_key.setdefault((len(f), hsum[u]), []).append(u)
        by_size.setdefault(len(f), []).append(u)

    # d = 1: a set and itself plus one token
    for v, V in enumerate(uniq):
        k = len(V) - 1
        if k in by_size:
            hit = set()
            for x in V:
                for u in by_key.get((k, hsum[v] - hash(x)), ()):
                    if u not in hit and uniq[u] < V:
                        hit.add(u)
                        dups += mult[uniq[u]] * mult[V]

    # d = 2, a swap: group (set, removed token) by the core left, confirmed on the core itself
    buckets = {}
    for v, V in enumerate(uniq):
        if len(by_size[len(V)]) >= 2:
            for a in V:
                buckets.setdefault((len(V), hsum[v] - hash(a)), []).append((v, a))
    for entries in buckets.values():
        if len(entries) < 2:
            continue
        groups = {}  # (the core, the removed token's stem when only plurals count) -> multiplicities
        for v, a in entries:
            key = (uniq[v] - {a}, _stem(a) if min_diff < 3 else None)
            groups.setdefault(key, []).append(mult[uniq[v]])
        for ms in groups.values():
            if len(ms) > 1:
                total = sum(ms)
                dups += (total * total - sum(m * m for m in ms)) // 2

    # d = 2, a set and itself plus two tokens (any two when min_diff is 3, else a word and its plural)
    for v, V in enumerate(uniq):
        k = len(V) - 2
        if k not in by_size:
            continue
        hit = set()
        if min_diff < 3:
            stems = {}
            for x in V:
                stems.setdefault(_stem(x), []).append(x)
            pairs = [p for p in stems.values() if len(p) == 2]
        elif len(V) * (len(V) - 1) // 2 <= 4 * len(by_size[k]):
            toks = list(V)
            pairs = [(x, y) for i, x in enumerate(toks) for y in toks[i + 1 :]]
        else:  # a long line: fewer sets of the right size than pairs of its tokens, test them directly
            for u in by_size[k]:
                if uniq[u] < V:
                    dups += mult[uniq[u]] * mult[V]
            continue
        for x, y in pairs:
            for u in by_key.get((k, hsum[v] - hash(x) - hash(y)), ()):
                # a subset two smaller, and (when only plurals count) missing this very pair: a hash
                # collision can hand back a subset missing another two tokens
                if u not in hit and uniq[u] < V and (min_diff >= 3 or (x not in uniq[u] and y not in uniq[u])):
                    hit.add(u)
                    dups += mult[uniq[u]] * mult[V]
    return dups


def _score(query: str, output, truncated: bool = False) -> Score:
    if truncated:
        hard = "cut at the token cap: generation reached max_tokens without the end token"
        return Score(query, lines=parse_output(output).lines, hard_failure=hard, issues=["truncated"])
    # The usual output (no template token, no <think>, valid lines) is parsed here, with each line's
    # lower case and words, in one loop; anything else goes through prompt.parse_output, the reference.
    plines, lows, words, empty, has_think = [], [], [], [], False
    if isinstance(output, str) and "<|" not in output and "think>" not in output:
        for raw in output.split("\n"):
            line = raw.strip()
            if not line:
                continue
            kind, colon, body = line.partition(":")
            if not colon or kind not in _LINE_TYPE_SET:
                plines = None  # an invalid line: the reference parser reports it
                break
            body = body.strip()
            if body:
                plines.append((kind, body))
                low = body.lower()
                lows.append(low)
                words.append(low.split())
            else:
                empty.append(kind)
    else:
        plines = None
    if plines is None:
        p = parse_output(output)
        if p.leaked:
            hard = f"chat-template token leaked: {p.leaked[0]}"
            return Score(query, lines=p.lines, hard_failure=hard, issues=["leaked token"])
        if p.invalid:
            hard = f"line without lex:/vec:/hyde: prefix: {p.invalid[0][:80]!r}"
            return Score(query, lines=p.lines, hard_failure=hard, issues=["invalid line"])
        plines, empty, has_think = p.lines, p.empty, p.think
        lows = [t.lower() for _, t in plines]
        words = [x.split() for x in lows]
    if not plines and not empty:
        return Score(query, lines=plines, hard_failure="empty output", issues=["empty output"])
    ded = []  # deductions: [(dimension, points lost, reason)]

    q = analyze_query(query)
    key_terms, plain = q.key_terms, q.plain
    found = []  # breakage: [(kind, detail)]
    n = len(plines)
    # A line that only repeats the query adds nothing: it is penalised once (diversity) and then left
    # out of every other check, so echoing the query cannot earn entity or quality points. Only a line
    # with as many words as the query, or more with a punctuation-only word at an end, can be one.
    # (A punctuation-only word starts with punctuation: that one-character test spares most lines a strip.)
    norm, qn = q.norm, q.norm_words
    echo = [False] * n
    for i, w in enumerate(words):
        lw = len(w)
        if plines[i][0] != "hyde" and (
            lw == qn
            or (
                lw > qn
                and ((w[0][0] in _STRIP and not w[0].strip(_STRIP)) or (w[-1][0] in _STRIP and not w[-1].strip(_STRIP)))
            )
        ):
            echo[i] = " ".join(w).strip(_STRIP_SP) == norm
    if not key_terms:
        has_key = [True] * n
    elif plain:
        has_key = [any(map(x.__contains__, key_terms)) for x in lows]
    else:
        has_key = [_has_term(x, key_terms) for x in lows]

    # Off-topic lines and lex lines padded with unrelated words are breakage, and are then left out of
    # every other check, as if absent: such a line must cost more than leaving it out.
    dropped = set()
    topic = q.topic
    if topic and not all(has_key):
        off = [
            i
            for i in range(n)
            if not has_key[i] and plines[i][0] != "hyde" and not echo[i] and not _has_term(lows[i], topic)
        ]
        if off:
            off_set = set(off)
            on = [i for i in range(n) if i not in off_set and (has_key[i] or _has_term(lows[i], topic))]
            dropped = _off_topic(off, lows, on)
            for i in sorted(dropped):
                found.append((f"off-topic {plines[i][0]}", f"{plines[i][1][:60]!r} shares no word with the query"))
    full_low = None  # the whole output in lower case, joined when a check needs it
    long = _LongOutput(lows) if n >= LONG_OUTPUT else None  # a long file: no scan of it per line
    for i in dropped:  # the lines checked below skip these
        if (hit := _placeholder(q, plines[i][1], lows[i], words[i])) is not None:
            found.append(("placeholder", f"template text {hit[:40]!r}"))
    # a template slot needs a bracket: one look at the whole output spares three per line (most have none)
    brackets = not isinstance(output, str) or "{" in output or "[" in output or "<" in output
    wsets = [None] * n  # token sets of the lex/vec lines, for the near-duplicate check
    numbered = set()  # lex lines that hold a digit (the near-duplicate check's number rule)
    lex_idx = []  # lex lines to check for unrelated words
    for i in range(n):
        k = plines[i][0]
        if k == "hyde" or echo[i] or i in dropped:
            continue
        w, low = words[i], lows[i]
        ws = wsets[i] = set(w)
        if (not _PLACE_WORDS.isdisjoint(ws) or (brackets and ("{" in low or "[" in low or "<" in low))) and (
            hit := _placeholder(q, plines[i][1], low, w)
        ) is not None:
            found.append(("placeholder", f"template text {hit[:40]!r}"))
        dup = len(w) - len(ws)
        if dup and (k == "lex" or dup >= 2) and (why := _repeated_words(q, k, plines[i][1], w)):
            found.append(("repeated words", why))
        if not FILLER_WORDS.isdisjoint(ws) and not q.word_set.isdisjoint(ws):
            rest = [x for x in map(str.strip, w, repeat(_STRIP)) if x and x not in STOPWORDS and x not in q.word_set]
            if rest and all(x in FILLER_WORDS for x in rest):
                found.append(("query plus filler", f"{k} line is the query plus {' '.join(rest)!r}"))
        if (
            ("-" in low or "_" in low or "." in low)
            and low.count("-") + low.count("_") + low.count(".") >= 2
            and (why := _chain(q, w))
        ):
            found.append(("token chain", why))
        if k == "lex":
            if _DIGIT_RE.search(low):
                numbered.add(i)
                if long is None:
                    full_low = full_low or "\n".join(lows)
                if why := _invented_number(q, low, w, full_low, long, i):
                    found.append(("invented number", why))
            lex_idx.append(i)
    # Unrelated lex words: only a lex line with 2+ words that are neither the query's nor stop words
    # (a set difference first; _unrelated_words then counts them in the output and asks the lexicon).
    for i in lex_idx:
        extra = wsets[i] - q.word_set - STOPWORDS
        if len(extra) < 2:
            continue
        if long is None:
            full_low = full_low or "\n".join(lows)
        if len(bad := _unrelated_words(q, lows[i], extra, full_low, long)) >= 2:
            found.append(
                ("unrelated lex words", f"{' '.join(bad)!r} beside the query's words in {plines[i][1][:60]!r}")
            )
            dropped.add(i)
    keep = [i for i in range(n) if i not in dropped] if dropped else range(n)
    L, V, H = [], [], []  # indices of the scored lex, vec and hyde lines
    n_echo = n_lex = n_vec = lex_len = vec_len = 0
    key_any = filler_led = vec_short = False  # a line has a key term; a lex line opens with filler; ...
    lex_keys = True  # every lex line has a key term
    generic = []  # generic filler lex lines (is_generic_lex), in the order of L
    for i in keep:
        k, t = plines[i]
        if k == "hyde":
            H.append(i)
            key_any = key_any or has_key[i]
            continue
        if k == "lex":
            n_lex += 1
        else:
            n_vec += 1
        if echo[i]:
            n_echo += 1
        elif k == "lex":
            L.append(i)
            if is_generic_lex(lows[i]):
                generic.append(i)
            key_any = key_any or has_key[i]
            lex_keys = lex_keys and has_key[i]
            lex_len += len(t)
            filler_led = filler_led or lows[i].startswith(FILLER_LEADS)
        else:
            V.append(i)
            key_any = key_any or has_key[i]
            vec_len += len(t)
            vec_short = vec_short or (len(words[i]) if lows[i].isascii() else _word_count(t)) < 3

    # -- format (0..30)
    fmt = 0
    if n_lex:
        fmt += 10
    else:
        ded.append(("format", 10, "no lex: line"))
    if n_vec:
        fmt += 10
    else:
        ded.append(("format", 10, "no vec: line"))
    wellformed = 10
    for kind in empty:
        wellformed -= 5
        ded.append(("format", 5, f"empty {kind}: line"))
    for kind, n in (("lex", n_lex), ("vec", n_vec)):
        if n > MAX_LINES[kind]:
            wellformed -= 5
            ded.append(("format", 5, f"{n} {kind} lines (at most {MAX_LINES[kind]})"))
    fmt += max(0, wellformed)

    # -- diversity (0..30)
    div = 0
    if L and V:
        div += 10
    else:
        ded.append(("diversity", 10, "not both lex and vec expansions (besides query echoes)"))
    if len(L) + len(V) >= 2:
        div += 5
    else:
        ded.append(("diversity", 5, "fewer than 2 expansions"))
    for name, idx, min_diff in (("lex", L, 2), ("vec", V, 3)):
        if len(idx) == 2:  # the usual case: one pair
            i, j = idx
            diff = (
                wsets[i] ^ wsets[j]
                if plain
                else _dup_set(lows[i], wsets[i], plain) ^ _dup_set(lows[j], wsets[j], plain)
            )
            if numbered and len(diff) >= min_diff and (i in numbered or j in numbered):
                diff = _less_new_numbers(q, diff)
            dups = 1 if len(diff) < min_diff or (len(diff) == 2 and _plural_pair(diff)) else 0
        elif len(idx) > 2:
            sets = [_dup_set(lows[i], wsets[i], plain) for i in idx]
            numq = q if numbered and not numbered.isdisjoint(idx) else None  # a line here holds a digit
            if len(idx) <= PAIRWISE_MAX:
                dups = _near_duplicates(sets, min_diff, numq)
            else:  # the near-linear count compares whole sets: the numbers go first
                dups = _near_duplicates_fast([_less_new_numbers(q, x) for x in sets] if numq else sets, min_diff)
        else:
            dups = 0
        div += max(0, 5 - 2 * dups)
        if dups:
            ded.append(("diversity", min(5, 2 * dups), f"{dups} near-duplicate {name} pair(s)"))
            # one case each (a long file can hold millions of pairs): past 7 the breakage cap is reached anyway
            found.extend([("near-duplicate lines", f"{name} lines that differ by a word or a plural")] * min(dups, 9))
            if dups > 9:
                found.append(("near-duplicate lines", f"{dups - 9} more {name} pairs"))
    div += max(0, 5 - 5 * n_echo)
    if n_echo:
        ded.append(("diversity", 5, f"{n_echo} line(s) just repeat the query"))

    # -- hyde (0..20, only when present)
    hyd = None
    for j, i in enumerate(H):
        counts = {}  # word -> count, counted in C (Counter's own __init__ costs more than the counting)
        _count_elements(counts, map(str.strip, words[i], repeat(_STRIP)))
        low = lows[i]
        if (not _PLACE_WORDS.isdisjoint(counts) or (brackets and ("{" in low or "[" in low or "<" in low))) and (
            hit := _placeholder(q, plines[i][1], low, words[i])
        ) is not None:
            found.append(("placeholder", f"template text {hit[:40]!r}"))
        top = max(counts.values())
        # repeats beyond those of the commonest function words (counted in C): a loop needs 2+ of them
        loop = 0  # what a loop needs: 3 repeats of one word (4 uses), or 4 repeated words
        if top >= 4 or (top >= 2 and len(words[i]) - len(counts) >= 4):
            # ... beyond those of the commonest function words (counted in C)
            loop = len(words[i]) - len(counts) - sum(map(counts.get, _COMMON_WORDS, repeat(1))) + len(_COMMON_WORDS)
        if loop >= 2 or len(counts) <= 2 * len(q.words) + 4:  # a loop repeats words, a shuffle has few
            _hyde_breakage(q, plines[i][1], words[i], counts, top if loop >= 2 else 0, found)
        if j:
            continue
        n = len(plines[i][1])
        hyd = 0
        if has_key[i]:
            hyd += 5
        else:
            ded.append(("hyde", 5, "hyde does not mention the query's key terms"))
        if HYDE_MIN <= n <= HYDE_MAX:
            hyd += 5
        elif n < HYDE_MIN:
            hyd += 2
            ded.append(("hyde", 3, f"hyde too short ({n} chars, want {HYDE_MIN}-{HYDE_MAX})"))
        else:
            ded.append(("hyde", 5, f"hyde too long ({n} chars, want {HYDE_MIN}-{HYDE_MAX})"))
        if len(H) <= MAX_LINES["hyde"]:
            hyd += 5
        else:
            ded.append(("hyde", 5, f"{len(H)} hyde lines (at most {MAX_LINES['hyde']})"))
        # words (punctuation stripped, stopwords aside) used 3+ times
        repeated = sum(1 for w, c in counts.items() if c >= 3 and w and w not in HYDE_STOPWORDS) if top >= 3 else 0
        hyd += max(0, 5 - 2 * repeated)
        if repeated:
            ded.append(("hyde", min(5, 2 * repeated), f"{repeated} word(s) repeated 3+ times in hyde"))

    # -- quality (0..20)
    qual = 0
    if key_any:
        qual += 5
    else:
        ded.append(("quality", 5, "no line mentions the query's key terms"))
    if L and not generic and not filler_led and lex_keys:
        qual += 5
    elif L:
        why = (
            "generic lex line"
            if generic
            else "lex line led by filler words"
            if filler_led
            else "a lex line drops the key terms"
        )
        ded.append(("quality", 5, why))
    if L and V:
        if lex_len / len(L) <= vec_len / len(V):
            qual += 5
        else:
            qual += 3
            ded.append(("quality", 2, "lex lines longer than vec lines"))
    if V:
        if not vec_short:
            qual += 5
        else:
            qual += 3
            ded.append(("quality", 2, "vec line is just keywords"))

    # -- named entities (-45..20)
    ent = 20
    if q.entities and L:
        ents = q.entities
        if ents is key_terms:  # no named entities: the key terms stand in
            has_ent = has_key
        elif plain:
            has_ent = {i: any(map(lows[i].__contains__, ents)) for i in L + V}
        else:
            has_ent = {i: _has_term(lows[i], ents) for i in L + V}
        kept = sum(map(has_ent.__getitem__, L))
        what = "named entities" if q.named else "key terms"
        if kept == len(L):
            ent = 15
        elif kept:
            ent = 5
            ded.append(("entity", 10, f"{len(L) - kept} lex line(s) drop the query's {what}"))
        else:
            ent = -30
            ded.append(("entity", 45, f"no lex line keeps the query's {what}"))
        vkept = sum(map(has_ent.__getitem__, V))
        if V and vkept == len(V):
            ent += 5
        elif vkept:
            ent += 2
            ded.append(("entity", 3, f"{len(V) - vkept} vec line(s) drop the query's {what}"))
        else:
            ded.append(("entity", 5, f"no vec line keeps the query's {what}"))
    elif not L:
        ent = 0
    if generic:
        ent -= 15 * len(generic)
        ded.append(("entity", 15 * len(generic), f"{len(generic)} generic filler lex line(s)"))
    ent = max(-45, min(20, ent))

    # -- think bonus (0..20)
    think = 0 if has_think else 20
    if has_think:
        ded.append(("think", 20, "output contains a <think> block"))

    # -- QMD survival (-20..0)
    qmd_total = len(L) + len(V)
    qterms = q.qmd_terms
    if not qterms:
        qmd_kept = qmd_total
    elif q.key_qmd:  # a line with a key term holds a QMD term: only the others need the scan
        qmd_kept = sum(1 for i in L + V if has_key[i] or any(map(lows[i].__contains__, qterms)))
    else:
        qmd_kept = sum(1 for i in L + V if any(map(lows[i].__contains__, qterms)))
    n_drop = qmd_total - qmd_kept
    surv = -min(20, 5 * n_drop)
    if n_drop:
        ded.append(("survival", -surv, f"QMD would drop {n_drop} line(s) sharing no query term"))

    # -- language (-40..0): a query written in a non-Latin script gets expansions in that script
    lang = 0
    if q.nonlatin:
        texts = [plines[i][1] for i in L + V + H]
        foreign = [x for x in texts if not _NONLATIN_RE.search(x)]
        if foreign and len(foreign) * 2 > len(texts):
            lang = -40
            ded.append(("language", 40, "expanded in another language than the query"))
        elif foreign:
            lang = -10 * sum(1 for i in V + H if not _NONLATIN_RE.search(plines[i][1]))
            if lang:
                ded.append(("language", -lang, "vec/hyde line(s) in another language than the query"))

    # -- breakage (-90..0): the first case of a kind -30, each further case -10
    brk = 0
    issues = []
    if found:
        per_kind = Counter(k for k, _ in found)
        issues = list(per_kind)
        seen = set()
        for kind, detail in found:
            ded.append(("breakage", BREAKAGE_MORE if kind in seen else BREAKAGE_POINTS, f"{kind}: {detail}"))
            seen.add(kind)
        brk = -min(BREAKAGE_CAP, sum(BREAKAGE_POINTS + BREAKAGE_MORE * (n - 1) for n in per_kind.values()))

    dims = {
        "format": fmt,
        "diversity": div,
        "quality": qual,
        "entity": ent,
        "think": think,
        "survival": surv,
        "language": lang,
        "breakage": brk,
    }
    if hyd is not None:
        dims["hyde"] = hyd
    # every field at once: the dataclass's default factories would only build what is replaced here
    return Score(
        query,
        dims,
        ded,
        float(sum(dims.values())),  # total
        120.0 if hyd is None else 140.0,  # max
        None,  # hard_failure
        plines,  # lines
        qmd_kept,
        qmd_total,
        issues,
    )


# ----------------------------------------------------------------------------
# Self-test: (query, better output, worse output) - the scorer must order every pair correctly.

SELF_TEST = [
    (
        "who is TDS motorsports",
        "lex: TDS motorsports history\nlex: TDS motorsports founders team\n"
        "vec: who founded TDS motorsports and what does the company do\n"
        "vec: background and ownership of the TDS motorsports racing team\n"
        "hyde: TDS Motorsports is a racing team and performance shop; its founders started it to build and run race cars.",
        "lex: find information about\nlex: company details\n"
        "vec: who is TDS motorsports company\nvec: TDS motorsports information",
    ),
    (
        "how to use React hooks",
        "lex: React hooks tutorial\nlex: React useState useEffect\n"
        "vec: how do React hooks replace class component state and lifecycle\n"
        "hyde: React hooks such as useState and useEffect let function components hold state and run side effects.",
        "lex: programming tutorial\nlex: how to code\nvec: how to use react hooks",
    ),
    (
        "auth config",
        "lex: auth config settings\nlex: authentication configuration file\n"
        "vec: where is the authentication configuration for the app stored\n"
        "hyde: Authentication is configured in config/auth.yml: set the provider and the AUTH_SECRET variable.",
        "auth is an important concept that relates to authentication.\nThe answer should be in Chinese.",
    ),
    (
        "docker networking",
        "lex: docker network bridge\nlex: docker compose networks dns\n"
        "vec: how do docker containers talk to each other over a user-defined network\n"
        "hyde: Containers on the same user-defined bridge network reach each other by service name via Docker's DNS.",
        "lex: docker networking\nvec: docker networking\n"
        "hyde: Docker networking is an important concept. Docker networking is used for containers. Docker networking matters.",
    ),
    (
        "kubernetes pod crashloop",
        "lex: kubernetes CrashLoopBackOff pod\nvec: why does a kubernetes pod keep restarting in CrashLoopBackOff",
        "<think>\nThe user wants...\n</think>\nlex: kubernetes CrashLoopBackOff pod\n"
        "vec: why does a kubernetes pod keep restarting in CrashLoopBackOff",
    ),
    (
        "sourdough starter",
        "lex: sourdough starter feeding\nvec: how often should a sourdough starter be fed\n"
        "hyde: Feed the sourdough starter 1:1:1 flour, water and starter every 12 hours at room temperature.",
        "lex: sourdough starter feeding\nvec: how often should a sourdough starter be fed<|im_end|>",
    ),
    (
        "postgres vacuum",
        "lex: postgres vacuum autovacuum\nvec: what does vacuum do in postgres and when does it run",
        "lex: database maintenance\nlex: cleanup tasks\nvec: routine maintenance for databases",
    ),
    (
        "Docker 容器 网络",
        "lex: Docker 容器 网络 配置\nvec: Docker 容器之间如何通过网络通信\n"
        "hyde: 在同一个自定义 bridge 网络中，Docker 容器可以通过服务名互相访问，无需手动配置 IP。",
        "lex: Docker container network\nvec: how do Docker containers communicate over a network\n"
        "hyde: Containers on the same bridge network can reach each other by name.",
    ),
    (
        "python",
        "lex: python language -snake\nlex: python3 venv pip\nvec: notes about programming in python",
        "lex: python\nvec: python",
    ),
    # one pair per breakage kind (evals/broken.jsonl): the repaired twin must beat the broken one
    (  # repeated words
        "who wrote this line",
        "lex: git blame line author\nlex: git log -L line history\nvec: how to find which commit and author last changed a line in git\nvec: using git blame to see who wrote a specific line of code\nhyde: Run `git blame -L 42,42 src/app.py` to see the commit, author and date that last touched line 42.",
        "lex: line line line\nlex: git log -L line history\nvec: how to find which commit and author last changed a line in git\nvec: using git blame to see who wrote a specific line of code\nhyde: Run `git blame -L 42,42 src/app.py` to see the commit, author and date that last touched line 42.",
    ),
    (  # near-duplicate lines
        "jwt token expiry",
        "lex: jwt exp claim expiry\nlex: jwt refresh token rotation\nvec: how to set and check the expiration time of a jwt access token\nvec: what happens when a jwt expires and how refresh tokens renew it\nhyde: The exp claim holds a Unix timestamp; the server rejects the token once it passes. Short-lived access tokens pair with a refresh token.",
        "lex: jwt token expiry\nlex: jwt token expiry time\nlex: jwt token expiry times\nvec: how to set and check the expiration time of a jwt access token\nvec: what happens when a jwt expires and how refresh tokens renew it\nhyde: The exp claim holds a Unix timestamp; the server rejects the token once it passes. Short-lived access tokens pair with a refresh token.",
    ),
    (  # query plus filler
        "postgres vacuum",
        "lex: postgres vacuum autovacuum\nlex: postgresql vacuum full analyze dead tuples\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: VACUUM marks dead tuples as reusable; VACUUM FULL rewrites the table and locks it. Autovacuum runs both on a schedule.",
        "lex: postgres vacuum autovacuum\nlex: postgres vacuum guide\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: VACUUM marks dead tuples as reusable; VACUUM FULL rewrites the table and locks it. Autovacuum runs both on a schedule.",
    ),
    (  # token chain
        "apply a single commit from another branch",
        "lex: git cherry-pick commit\nlex: cherry-pick single commit another branch\nvec: how to apply one commit from a different branch onto the current branch\nvec: copying a single commit between branches with git cherry-pick\nhyde: Check out the target branch and run `git cherry-pick 4f2a9c1`; git applies that one commit as a new commit on top.",
        "lex: commit-local-origin-origin-origin\nlex: git cherry-pick commit\nvec: how commit-local-origin-origin affects the origin origin\nvec: copying a single commit between branches with git cherry-pick",
    ),
    (  # looping hyde
        "who wrote this line",
        "lex: git blame line author\nlex: git log -L line history\nvec: how to find which commit and author last changed a line in git\nvec: using git blame to see who wrote a specific line of code\nhyde: Run `git blame -L 42,42 src/app.py` to see the commit, author and date that last touched line 42.",
        'lex: git blame line author\nvec: using git blame to see who wrote a specific line of code\nhyde: Line line, line line edit: "a" "d" "r" line line',
    ),
    (  # shuffled-query hyde
        "apply a single commit from another branch",
        "lex: git cherry-pick commit\nlex: cherry-pick single commit another branch\nvec: how to apply one commit from a different branch onto the current branch\nvec: copying a single commit between branches with git cherry-pick\nhyde: Check out the target branch and run `git cherry-pick 4f2a9c1`; git applies that one commit as a new commit on top.",
        "lex: git cherry-pick commit\nlex: cherry-pick single commit another branch\nvec: how to apply one commit from a different branch onto the current branch\nvec: copying a single commit between branches with git cherry-pick\nhyde: Branch another from commit single a apply, commit from another branch single apply.",
    ),
    (  # off-topic lex
        "postgres vacuum",
        "lex: postgres vacuum autovacuum\nlex: postgresql vacuum full analyze dead tuples\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: VACUUM marks dead tuples as reusable; VACUUM FULL rewrites the table and locks it. Autovacuum runs both on a schedule.",
        "lex: postgres vacuum autovacuum\nlex: weekend hiking trails\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: VACUUM marks dead tuples as reusable; VACUUM FULL rewrites the table and locks it. Autovacuum runs both on a schedule.",
    ),
    (  # off-topic vec
        "who wrote this line",
        "lex: git blame line author\nlex: git log -L line history\nvec: how to find which commit and author last changed a line in git\nvec: using git blame to see who wrote a specific line of code\nhyde: Run `git blame -L 42,42 src/app.py` to see the commit, author and date that last touched line 42.",
        "lex: git blame line author\nlex: git log -L line history\nvec: how to find which commit and author last changed a line in git\nvec: my notes on writing a new story\nhyde: Run `git blame -L 42,42 src/app.py` to see the commit, author and date that last touched line 42.",
    ),
    (  # unrelated lex words
        "sqlite wal mode",
        "lex: sqlite journal_mode wal\nlex: sqlite write-ahead log checkpoint\nvec: how to turn on write-ahead logging in sqlite and what it changes\nvec: sqlite wal mode with concurrent readers and a single writer\nhyde: Run PRAGMA journal_mode=WAL once per database. Readers no longer block the writer, and checkpoints copy the -wal file back.",
        "lex: sqlite journal_mode wal\nlex: sqlite banana bicycle\nvec: how to turn on write-ahead logging in sqlite and what it changes\nvec: sqlite wal mode with concurrent readers and a single writer\nhyde: Run PRAGMA journal_mode=WAL once per database. Readers no longer block the writer, and checkpoints copy the -wal file back.",
    ),
    (  # placeholder
        "postgres vacuum",
        "lex: postgres vacuum autovacuum\nlex: postgresql vacuum full analyze dead tuples\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: VACUUM marks dead tuples as reusable; VACUUM FULL rewrites the table and locks it. Autovacuum runs both on a schedule.",
        "lex: postgres vacuum autovacuum\nlex: postgresql vacuum full analyze dead tuples\nvec: what does vacuum do in postgres and when does autovacuum run\nvec: reclaiming space from dead rows with vacuum in postgresql\nhyde: Lorem ipsum dolor sit amet, postgres vacuum consectetur adipiscing elit, sed do eiusmod tempor.",
    ),
    (  # invented number
        "python match statement",
        'lex: python match case statement\nlex: python structural pattern matching\nvec: how to use the match statement for structural pattern matching in python\nvec: python match case syntax with guards and class patterns\nhyde: `match cmd:` then `case ["go", direction]: move(direction)` and `case _: print("unknown")` matches a value by its structure.',
        'lex: python match case statement\nlex: python 4.2 match statement\nvec: how to use the match statement for structural pattern matching in python\nvec: python match case syntax with guards and class patterns\nhyde: `match cmd:` then `case ["go", direction]: move(direction)` and `case _: print("unknown")` matches a value by its structure.',
    ),
]


def self_test(verbose: bool = True) -> int:
    failures = 0
    for query, better, worse in SELF_TEST:
        good, bad = score(query, better), score(query, worse)
        ok = good.reward > bad.reward
        failures += not ok
        if verbose:
            mark = "ok  " if ok else "FAIL"
            click.echo(
                f"{mark} {query!r:32} better {good.reward:.2f} ({good.rating}) > worse {bad.reward:.2f} ({bad.rating})"
            )
    click.echo(f"{len(SELF_TEST) - failures}/{len(SELF_TEST)} orderings correct")
    return failures


# ----------------------------------------------------------------------------
# CLI


def _record_text(rec: dict):
    """Model text of a JSONL record: an eval dump's "text"/"output" string or a data file's pairs."""
    out = rec.get("text", rec.get("output"))
    if isinstance(out, list):
        return "\n".join(f"{k}: {t}" for k, t in out if isinstance(k, str) and isinstance(t, str))
    return out if isinstance(out, str) else None


def record_truncated(rec: dict) -> bool:
    """A JSONL record's `truncated` flag (generation stopped at max_tokens without the end token)."""
    return rec.get("truncated") is True


def issue_counts(issue_lists) -> Counter:
    """How many outputs show each breakage kind, from Score.issues lists (or to_dict()["issues"])."""
    counts = Counter()
    for issues in issue_lists:
        counts.update(issues or ())
    return counts


def format_issues(counts) -> str:
    """ "repeated words 7, off-topic vec 3, truncated 2" (most frequent first), or "none"."""
    return ", ".join(f"{kind} {n}" for kind, n in Counter(counts).most_common()) or "none"


def explain(s: Score) -> str:
    """Human-readable deductions, one per line."""
    if s.hard_failure:
        return f"  HARD FAILURE: {s.hard_failure}"
    return "\n".join(f"  -{pts:g} {dim}: {why}" for dim, pts, why in s.deductions) or "  (no deductions)"


@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx):
    """Rule-based scorer for QMD query expansions. With no command: run the self-test."""
    if ctx.invoked_subcommand is None:
        sys.exit(1 if self_test() else 0)


@cli.command("score")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--min-score", type=float, default=None, help="Exit 1 if any record scores below this (0-1).")
@click.option("--quiet", "-q", is_flag=True, help="Print only records with deductions and the summary.")
def score_cmd(path, min_score, quiet):
    """Score every record of a JSONL file and print each score with its deductions.

    Records are {"query": ..., "output": [[type, text], ...]} (training data) or
    {"query": ..., "text": "..."} (generated outputs). A record with "truncated": true (generation hit
    max_tokens without the end token) scores as a failure. The summary counts each breakage kind.
    """
    from data import jsonl_records  # the project's one JSONL reader (data.py imports nothing of ours but prompt)

    scores, issues = [], Counter()
    records, problems = jsonl_records(path)
    for problem in problems:
        click.echo(problem)
    bad_lines = len(problems)
    for where, rec in records:
        query = rec.get("query") if isinstance(rec, dict) else None
        text = _record_text(rec) if isinstance(rec, dict) else None
        if not isinstance(query, str) or text is None:
            click.echo(f'{where}: needs "query" and "output" (pairs) or "text"')
            bad_lines += 1
            continue
        s = score(query, text, truncated=record_truncated(rec))
        scores.append(s.reward)
        issues.update(s.issues)
        if not quiet or s.deductions or s.hard_failure:
            click.echo(f"{where}: {s.reward:.2f} {s.rating:10} {query}")
            if s.deductions or s.hard_failure:
                click.echo(explain(s))
    if scores:
        below = sum(1 for x in scores if x < 0.8)
        click.echo(
            f"\n{len(scores)} scored: mean {sum(scores) / len(scores):.3f}, min {min(scores):.3f}, "
            f"{below} below 0.80 (Excellent), {bad_lines} unreadable line(s)"
        )
        click.echo(f"breakage: {format_issues(issues)}")
    if bad_lines or not scores or (min_score is not None and min(scores) < min_score):
        sys.exit(1)


if __name__ == "__main__":
    cli()
