"""Rule-based scorer for query expansions: the single source of truth for reward and evaluation.

    python reward.py                      # self-test on built-in good/bad pairs; exits 1 on a wrong ordering
    python reward.py score FILE.jsonl     # score a data file ({"query", "output": [[type, text], ...]})
                                          # or an eval dump ({"query", "text"}); prints every deduction

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

    max = 120, or 140 with a hyde line; score = clamp(total / max, 0, 1)
    Excellent >= 0.80, Good >= 0.60, Acceptable >= 0.40, Poor >= 0.20, else Failed

Hard failures score 0: empty output, a leaked chat-template token (<|im_end|>, ...), or any non-blank
line without a lex:/vec:/hyde: prefix.

Named entities follow the rubric's heuristics (acronyms, capitalised words after the first, words with
. + # @ _ or inner capitals, and the word after an entity). When a query has none, its key terms (words
that are not stop words) stand in for them, so "auth config" must still keep "auth" or "config".
CJK text has no spaces: a CJK run matches a line when they share any two-character substring.

Speed matters (GRPO scores every sample): query analysis is cached, the hot path is plain string
operations, and nothing here imports MLX. Nothing raises: any input returns a value in [0, 1].
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import NamedTuple

import click

from prompt import parse_output, qmd_keeps, qmd_query_terms

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
HYDE_STOPWORDS = frozenset("the a an is are to for of in and or".split()) | FOREIGN_FUNCTION_WORDS

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_CJK_RUN_RE = re.compile(f"[{_CJK}]+")
_TOKEN_RE = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")
# Letters of scripts other than Latin (Cyrillic, Greek, Arabic, Hebrew, Thai, Devanagari, Hangul, CJK)
_NONLATIN_RE = re.compile(f"[\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0900-\u0dff\u0e00-\u0e7f\uac00-\ud7af{_CJK}]")
_STRIP = ".,!?:;()[]{}\"'`“”‘’«»"
_ENTITY_CHARS = frozenset(".+#@_")
_GENERIC_RE = re.compile("|".join(map(re.escape, GENERIC_LEX_PHRASES)))

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
    entities: tuple  # terms that lex lines must keep (named entities, else key terms)
    named: bool  # True when `entities` are real named entities
    key_terms: tuple  # content words of the query
    qmd_terms: tuple  # QMD's run-time filter terms
    nonlatin: bool  # the query is (partly) written in a non-Latin script


@lru_cache(maxsize=65536)
def analyze_query(query: str) -> QueryInfo:
    words = []
    for raw in query.split():
        if raw.startswith("-") and len(raw) > 1:  # an exclusion ("-car") is not something to keep
            continue
        w = raw.strip(_STRIP)
        if w:
            words.append(w)
    entities, key_terms, prev = [], [], False
    for i, w in enumerate(words):
        low = w.lower()
        is_ent = _is_entity_word(w, low, i, prev)
        term = _term(low)
        if is_ent:
            entities.append(term)
        if low not in STOPWORDS and (len(w) >= 2 or _CJK_RE.search(w)):
            key_terms.append(term)
        prev = is_ent
    if query.isascii():  # most queries: no per-character scan needed
        nonlatin = False
    else:
        n_nonlatin = sum(1 for c in _NONLATIN_RE.findall(query) if c.isalpha())
        n_letters = sum(1 for c in query if c.isalpha())
        nonlatin = n_nonlatin >= 2 or (n_letters > 0 and n_nonlatin * 2 > n_letters)
    named = bool(entities)
    return QueryInfo(
        norm=_norm(query),
        entities=tuple(dict.fromkeys(entities or key_terms)),
        named=named,
        key_terms=tuple(dict.fromkeys(key_terms)),
        qmd_terms=qmd_query_terms(query),
        nonlatin=nonlatin,
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(_STRIP + " ")


def _has_term(low: str, terms) -> bool:
    for t in terms:
        if isinstance(t, str):
            if t in low:
                return True
        elif any(b in low for b in t):
            return True
    return False


def _tokens(low: str) -> list:
    return _TOKEN_RE.findall(low) if not low.isascii() and _CJK_RE.search(low) else low.split()


def _word_count(text: str) -> float:
    if text.isascii() or not _CJK_RE.search(text):
        return len(text.split())
    cjk = len(_CJK_RE.findall(text))
    return cjk / 2 + len(_CJK_RUN_RE.sub(" ", text).split())


def _near_duplicates(lows, min_diff: int) -> int:
    """Pairs of lower-cased lines whose token sets differ by fewer than `min_diff` tokens (or are equal).

    A few lines are compared pair by pair. Many lines (reward.py is a public scorer that users point
    at any file: 10,000 lines took a minute pairwise) are counted in time linear in the number of
    lines by _near_duplicates_hashed, which gives the same count for the rubric's min_diff 2 and 3.
    """
    sets = [frozenset(_tokens(x)) for x in lows]
    n = len(sets)
    if n > 16 and min_diff <= 3:
        sizes = [len(x) for x in sets]
        work = sum(sizes) if min_diff <= 2 else sum(m * m for m in sizes)
        if work < n * (n - 1) // 2 * (1 + sum(sizes) // n):  # cheaper than comparing every pair
            return _near_duplicates_hashed(sets, min_diff)
    dups = 0
    for i in range(n):
        for j in range(i + 1, n):
            if len(sets[i] ^ sets[j]) < min_diff:
                dups += 1
    return dups


def _near_duplicates_hashed(sets, min_diff: int) -> int:
    """The pair count of _near_duplicates for min_diff <= 3 without comparing pairs.

    Sets A, B with |A ^ B| = d < min_diff are: equal (d 0); B = A + x (d 1); B = A + x + y or
    A = C + x, B = C + y (d 2). Each distinct set is keyed by (size, sum of its tokens' hashes), so a
    set with one or two tokens removed is a dictionary look-up; every hit is verified with real set
    operations, so hash collisions cannot change the count. Cost: O(tokens) per line for d <= 1,
    O(tokens^2) per line for d = 2.
    """
    counts = Counter(sets)
    dups = sum(c * (c - 1) // 2 for c in counts.values())
    if min_diff <= 1:
        return dups
    hashes = {s: sum(map(hash, s)) for s in counts}
    by_key: dict = {}
    for s in counts:
        by_key.setdefault((len(s), hashes[s]), []).append(s)
    sizes = {len(s) for s in counts}
    for b, cb in counts.items():  # d = 1: b minus one token is another line's set
        if len(b) - 1 not in sizes:
            continue
        hb = hashes[b]
        for x in b:
            for a in by_key.get((len(b) - 1, hb - hash(x)), ()):
                if x not in a and a < b:
                    dups += counts[a] * cb
    if min_diff <= 2:
        return dups
    groups: dict = {}  # (size, hash) of s minus one token -> [(s, the token)]
    for b, cb in counts.items():
        hb, items = hashes[b], list(b)
        for i, x in enumerate(items):
            hx = hash(x)
            groups.setdefault((len(b) - 1, hb - hx), []).append((b, x))
            if len(b) - 2 in sizes:  # d = 2 by two extra tokens: b minus x and y is another line's set
                for y in items[i + 1 :]:
                    for a in by_key.get((len(b) - 2, hb - hx - hash(y)), ()):
                        if x not in a and y not in a and a < b:
                            dups += counts[a] * cb
    for members in groups.values():  # d = 2 by one swapped token: same set once one token is removed
        if len(members) < 2:
            continue
        cores: dict = {}
        for s, x in members:
            cores.setdefault(s - {x}, []).append(counts[s])
        for cs in cores.values():
            if len(cs) > 1:
                total = sum(cs)
                dups += (total * total - sum(c * c for c in cs)) // 2
    return dups


def is_generic_lex(low: str) -> bool:
    """A lex line that is a filler phrase with (almost) nothing specific left: "find information about"."""
    if not _GENERIC_RE.search(low):  # one C-level scan rules out most lines
        return False
    for phrase in GENERIC_LEX_PHRASES:
        if phrase in low:
            remaining = low.replace(phrase, " ")
            if len("".join(remaining.split())) < 3:
                return True
    return False


# ----------------------------------------------------------------------------
# Scoring


@dataclass
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
        }


def score(query: str, output: str) -> Score:
    """Score one model output (raw generated text) for one query. Never raises."""
    try:
        return _score(query if isinstance(query, str) else str(query), output)
    except Exception as exc:  # noqa: BLE001 - a scorer bug must not crash a training run
        s = Score(query=str(query))
        s.hard_failure = f"scorer error: {type(exc).__name__}: {exc}"
        return s


def reward(query: str, output: str) -> float:
    """Reward in [0, 1] for RL."""
    return score(query, output).reward


def score_batch(queries, outputs) -> list:
    """Rewards for parallel lists of queries and outputs."""
    return [score(q, o).reward for q, o in zip(queries, outputs, strict=True)]


def _score(query: str, output) -> Score:
    s = Score(query=query)
    ded = s.deductions
    p = parse_output(output)
    s.lines = p.lines
    if p.leaked:
        s.hard_failure = f"chat-template token leaked: {p.leaked[0]}"
        return s
    if p.invalid:
        s.hard_failure = f"line without lex:/vec:/hyde: prefix: {p.invalid[0][:80]!r}"
        return s
    if not p.lines and not p.empty:
        s.hard_failure = "empty output"
        return s

    q = analyze_query(query)
    # A line that only repeats the query adds nothing: it is penalised once (diversity) and then left
    # out of every other check, so echoing the query cannot earn entity or quality points.
    echo = [k != "hyde" and _norm(t) == q.norm for k, t in p.lines]  # one flag per line
    echoes = [t for (k, t), e in zip(p.lines, echo) if e]
    lex = [t for (k, t), e in zip(p.lines, echo) if k == "lex" and not e]
    vec = [t for (k, t), e in zip(p.lines, echo) if k == "vec" and not e]
    hyde = [t for k, t in p.lines if k == "hyde"]
    n_lex = sum(1 for k, _ in p.lines if k == "lex")
    n_vec = sum(1 for k, _ in p.lines if k == "vec")
    lex_low = [x.lower() for x in lex]
    vec_low = [x.lower() for x in vec]

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
    for kind in p.empty:
        wellformed -= 5
        ded.append(("format", 5, f"empty {kind}: line"))
    for kind, n in (("lex", n_lex), ("vec", n_vec)):
        if n > 3:
            wellformed -= 5
            ded.append(("format", 5, f"{n} {kind} lines (at most 3)"))
    fmt += max(0, wellformed)

    # -- diversity (0..30)
    div = 0
    if lex and vec:
        div += 10
    else:
        ded.append(("diversity", 10, "not both lex and vec expansions (besides query echoes)"))
    if len(lex) + len(vec) >= 2:
        div += 5
    else:
        ded.append(("diversity", 5, "fewer than 2 expansions"))
    for name, lines, min_diff in (("lex", lex_low, 2), ("vec", vec_low, 3)):
        dups = _near_duplicates(lines, min_diff) if len(lines) > 1 else 0
        div += max(0, 5 - 2 * dups)
        if dups:
            ded.append(("diversity", min(5, 2 * dups), f"{dups} near-duplicate {name} pair(s)"))
    div += max(0, 5 - 5 * len(echoes))
    if echoes:
        ded.append(("diversity", 5, f"{len(echoes)} line(s) just repeat the query"))

    # -- hyde (0..20, only when present)
    hyd = None
    if hyde:
        h = hyde[0]
        hyd = 0
        if _has_term(h.lower(), q.key_terms) or not q.key_terms:
            hyd += 5
        else:
            ded.append(("hyde", 5, "hyde does not mention the query's key terms"))
        n = len(h)
        if 50 <= n <= 200:
            hyd += 5
        elif n < 50:
            hyd += 2
            ded.append(("hyde", 3, f"hyde too short ({n} chars, want 50-200)"))
        else:
            ded.append(("hyde", 5, f"hyde too long ({n} chars, want 50-200)"))
        if len(hyde) == 1:
            hyd += 5
        else:
            ded.append(("hyde", 5, f"{len(hyde)} hyde lines (at most 1)"))
        # words (punctuation stripped, stopwords aside) used 3+ times; counted in C (Counter over map)
        counts = Counter(map(str.strip, h.lower().split(), repeat(_STRIP)))
        repeated = sum(1 for w, c in counts.items() if c >= 3 and w and w not in HYDE_STOPWORDS)
        hyd += max(0, 5 - 2 * repeated)
        if repeated:
            ded.append(("hyde", min(5, 2 * repeated), f"{repeated} word(s) repeated 3+ times in hyde"))

    # -- quality (0..20)
    qual = 0
    if any(_has_term(x.lower(), q.key_terms) for x in lex + vec + hyde) or not q.key_terms:
        qual += 5
    else:
        ded.append(("quality", 5, "no line mentions the query's key terms"))
    generic = [x for x in lex_low if is_generic_lex(x)]
    filler_led = [x for x in lex_low if x.startswith(FILLER_LEADS)]
    lex_keeps = all(_has_term(x, q.key_terms) for x in lex_low) if q.key_terms else True
    if lex and lex_keeps and not generic and not filler_led:
        qual += 5
    elif lex:
        why = (
            "generic lex line"
            if generic
            else "lex line led by filler words"
            if filler_led
            else "a lex line drops the key terms"
        )
        ded.append(("quality", 5, why))
    if lex and vec:
        if sum(map(len, lex)) / len(lex) <= sum(map(len, vec)) / len(vec):
            qual += 5
        else:
            qual += 3
            ded.append(("quality", 2, "lex lines longer than vec lines"))
    if vec:
        if all(_word_count(x) >= 3 for x in vec):
            qual += 5
        else:
            qual += 3
            ded.append(("quality", 2, "vec line is just keywords"))

    # -- named entities (-45..20)
    ent = 20
    if q.entities and lex:
        kept = sum(1 for x in lex_low if _has_term(x, q.entities))
        what = "named entities" if q.named else "key terms"
        if kept == len(lex):
            ent = 15
        elif kept:
            ent = 5
            ded.append(("entity", 10, f"{len(lex) - kept} lex line(s) drop the query's {what}"))
        else:
            ent = -30
            ded.append(("entity", 45, f"no lex line keeps the query's {what}"))
        vkept = sum(1 for x in vec_low if _has_term(x, q.entities))
        if vec and vkept == len(vec):
            ent += 5
        elif vkept:
            ent += 2
            ded.append(("entity", 3, f"{len(vec) - vkept} vec line(s) drop the query's {what}"))
        else:
            ded.append(("entity", 5, f"no vec line keeps the query's {what}"))
    elif not lex:
        ent = 0
    if generic:
        ent -= 15 * len(generic)
        ded.append(("entity", 15 * len(generic), f"{len(generic)} generic filler lex line(s)"))
    ent = max(-45, min(20, ent))

    # -- think bonus (0..20)
    think = 0 if p.think else 20
    if p.think:
        ded.append(("think", 20, "output contains a <think> block"))

    # -- QMD survival (-20..0)
    lv = lex + vec
    s.qmd_total = len(lv)
    s.qmd_kept = sum(1 for x in lex_low + vec_low if qmd_keeps(x, q.qmd_terms))
    dropped = s.qmd_total - s.qmd_kept
    surv = -min(20, 5 * dropped)
    if dropped:
        ded.append(("survival", -surv, f"QMD would drop {dropped} line(s) sharing no query term"))

    # -- language (-40..0): a query written in a non-Latin script gets expansions in that script
    lang = 0
    if q.nonlatin:
        foreign = [x for x in lex + vec + hyde if not _NONLATIN_RE.search(x)]
        if foreign and len(foreign) * 2 > len(lex) + len(vec) + len(hyde):
            lang = -40
            ded.append(("language", 40, "expanded in another language than the query"))
        elif foreign:
            lang = -10 * sum(1 for x in vec + hyde if not _NONLATIN_RE.search(x))
            if lang:
                ded.append(("language", -lang, "vec/hyde line(s) in another language than the query"))

    s.dimensions = {
        "format": fmt,
        "diversity": div,
        "quality": qual,
        "entity": ent,
        "think": think,
        "survival": surv,
        "language": lang,
    }
    s.max = 120.0
    if hyd is not None:
        s.dimensions["hyde"] = hyd
        s.max = 140.0
    s.total = float(sum(s.dimensions.values()))
    return s


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
    {"query": ..., "text": "..."} (generated outputs).
    """
    scores, bad_lines = [], 0
    with open(path, encoding="utf-8-sig") as f:  # -sig: a UTF-8 BOM at the start is not part of the JSON
        for lineno, raw in enumerate(f, 1):
            raw = raw.lstrip("\ufeff")
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                click.echo(f"{path}:{lineno}: not valid JSON ({exc.msg})")
                bad_lines += 1
                continue
            query = rec.get("query") if isinstance(rec, dict) else None
            text = _record_text(rec) if isinstance(rec, dict) else None
            if not isinstance(query, str) or text is None:
                click.echo(f'{path}:{lineno}: needs "query" and "output" (pairs) or "text"')
                bad_lines += 1
                continue
            s = score(query, text)
            scores.append(s.reward)
            if not quiet or s.deductions or s.hard_failure:
                click.echo(f"{path}:{lineno}: {s.reward:.2f} {s.rating:10} {query}")
                if s.deductions or s.hard_failure:
                    click.echo(explain(s))
    if scores:
        below = sum(1 for x in scores if x < 0.8)
        click.echo(
            f"\n{len(scores)} scored: mean {sum(scores) / len(scores):.3f}, min {min(scores):.3f}, "
            f"{below} below 0.80 (Excellent), {bad_lines} unreadable line(s)"
        )
    if bad_lines or not scores or (min_score is not None and min(scores) < min_score):
        sys.exit(1)


if __name__ == "__main__":
    cli()
