"""Training queries from a folder of markdown, with no labels: each query is tied to the document it
was made from, so a search can be scored by where that document lands (retrieval_reward.py).

    python corpus_queries.py ~/notes -o adapters/my-queries      # writes train.jsonl and heldout.jsonl
    python eval_retrieval.py --corpus ~/notes --queries adapters/my-queries/heldout.jsonl --adapter A

Why made this way. A user's notes come without queries, but every title, heading and sentence is
something a person might have searched for when they wanted that page. Copied as written, though,
such a query finds its page by BM25 alone (its words are the page's words), and the expansion has
nothing to add. So the page's own phrasing is partly taken away, the way a person who half remembers
a page searches for it:
  * stop words and filler are dropped;
  * the most distinctive word (rarest in the corpus: the one BM25 would find the page by) is
    dropped from half of the queries that have words to spare;
  * common words are swapped for a synonym from a small fixed table (PARAPHRASES: "remove" for
    "delete", "settings" for "configuration", ...), so the query speaks the user's words, not the
    page's;
  * a run of 2 to 4 consecutive content words is kept, not the whole line;
  * some heading queries are phrased as questions ("how to ...", "what is ..."), as people type them.
Every choice is drawn from a generator seeded by (seed, document, source line), so the same corpus
and seed give the same queries on every machine. Given a search engine (build_queries(engine=...)),
queries the raw query already answers with QMD's strong-signal skip are dropped (QMD would not use
the expansion, so no completion can do better than another), and per document the queries whose page
the raw query does not rank first come first: those are the ones where expansion can help; a share
of easy ones (easy_share) stays so that GRPO also learns not to hurt.

Train and held-out are split BY DOCUMENT (split_documents): no held-out page has a query in
training, so the held-out queries measure what carries over to pages the model never saw rewarded.
Queries that appear in the project's evaluation files (evals/queries.txt, evals/retrieval/*.jsonl)
are never produced.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import click

import retrieval
import reward
import runtime

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#'._-]*[A-Za-z0-9+#]|[A-Za-z0-9]")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
# Words that carry no topic in documentation and notes (on top of reward.STOPWORDS).
FILLER = frozenset(
    "also may might must need needs needed make makes made like such each other only very much many "
    "one two first new see note etc e.g i.e example examples following follow here now well even "
    "still usually often typically however therefore instead rather whether while because since "
    "has have had being having shall let lets want wants within via per both either neither".split()
)
# A small fixed thesaurus: the user's word for the page's word (only common, unambiguous swaps).
PARAPHRASES = {
    "delete": "remove",
    "remove": "delete",
    "configuration": "settings",
    "config": "settings",
    "configure": "set up",
    "settings": "config",
    "install": "set up",
    "installing": "setting up",
    "installation": "setup",
    "error": "problem",
    "errors": "problems",
    "fail": "break",
    "fails": "breaks",
    "failure": "problem",
    "directory": "folder",
    "directories": "folders",
    "folder": "directory",
    "file": "document",
    "create": "make",
    "creating": "making",
    "run": "execute",
    "running": "executing",
    "execute": "run",
    "show": "display",
    "display": "show",
    "list": "show all",
    "specify": "set",
    "specified": "given",
    "default": "standard",
    "option": "flag",
    "options": "flags",
    "argument": "parameter",
    "arguments": "parameters",
    "parameter": "argument",
    "environment": "env",
    "variable": "var",
    "variables": "vars",
    "package": "library",
    "packages": "libraries",
    "library": "package",
    "dependency": "requirement",
    "dependencies": "requirements",
    "requirement": "dependency",
    "requirements": "dependencies",
    "download": "fetch",
    "downloads": "fetches",
    "upgrade": "update",
    "update": "upgrade",
    "version": "release",
    "versions": "releases",
    "build": "compile",
    "building": "compiling",
    "check": "verify",
    "verify": "check",
    "secure": "safe",
    "security": "safety",
    "authentication": "login",
    "credentials": "password",
    "password": "credentials",
    "network": "internet",
    "cache": "cached files",
    "location": "path",
    "path": "location",
    "project": "app",
    "application": "app",
    "documentation": "docs",
    "tutorial": "guide",
    "guide": "tutorial",
    "meeting": "call",
    "recipe": "dish",
    "budget": "spending",
    "money": "cash",
    "buy": "purchase",
    "purchase": "buy",
    "start": "begin",
    "stop": "end",
    "fast": "quick",
    "slow": "sluggish",
    "big": "large",
    "large": "big",
    "small": "little",
    "quickly": "fast",
    "problem": "issue",
    "issue": "problem",
    "change": "modify",
    "modify": "change",
    "use": "utilize",
    "support": "handle",
    "behavior": "behaviour",
    "behaviour": "behavior",
}
QUESTIONS = ("how to {}", "what is {}")


class CorpusError(runtime.ConfigError):
    """A corpus that cannot give training queries: missing, empty, too few documents or queries."""


@dataclass
class CorpusQuery:
    query: str
    doc: str  # the source document, relative to the corpus
    kind: str  # title | heading | sentence
    source: str  # the line it was made from
    none_ndcg: float | None = None  # nDCG@10 of the raw query alone (with an engine)

    def record(self) -> dict:
        """eval_retrieval.py's queries format (the source document is the one relevant page)."""
        rec = {"query": self.query, "relevant": {self.doc: 1}, "category": self.kind, "source": self.source}
        if self.none_ndcg is not None:
            rec["none_ndcg"] = round(self.none_ndcg, 4)
        return rec


# ----------------------------------------------------------------------------
# Markdown -> headings and sentences


def _plain(text: str) -> str:
    """Inline markdown/MyST/HTML to plain words: links and roles become their text."""
    text = re.sub(r"\{[\w:-]+\}`([^`<]*?)\s*(?:<[^>]*>)?`", r"\1", text)  # {ref}`text <target>`
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url), images
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"https?://\S+", " ", text)
    return re.sub(r"[`*_~]+", "", text).strip()


def lines_of(body: str):
    """(kind, text) for every heading and prose sentence of a markdown page, in order. Code fences,
    tables, directives, label lines and front matter are skipped; the first heading is the title."""
    out, para, in_fence, seen_title = [], [], False, False

    def flush():
        if para:
            text = _plain(" ".join(para))
            out.extend(("sentence", s) for s in SENTENCE_END.split(text) if s.strip())
            para.clear()

    for raw in body.splitlines():
        line = raw.strip()
        if FENCE.match(line):
            flush()
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = HEADING.match(line)
        if m:
            flush()
            out.append(("heading" if seen_title else "title", _plain(m.group(2))))
            seen_title = True
            continue
        if not line or line.startswith(("|", "<", "..", ":", "(", "{", "---", "===", "$ ", ">>>", "+")):
            flush()
            continue
        para.append(re.sub(r"^(?:[-*+]|\d+[.)]|>)\s+", "", line))
    flush()
    return out


def words_of(text: str) -> list:
    """Content words in order, each once, lower-cased: no stop words, filler or bare numbers."""
    seen, out = set(), []
    for w in WORD.findall(text):
        low = w.lower().strip("'.-_")
        if len(low) < 2 or low in reward.STOPWORDS or low in FILLER or low in seen or not any(c.isalpha() for c in low):
            continue
        seen.add(low)
        out.append(low)
    return out


# ----------------------------------------------------------------------------
# Queries


def document_frequency(docs) -> dict:
    df = {}
    for d in docs:
        for w in set(words_of(d.body)):
            df[w] = df.get(w, 0) + 1
    return df


def make_query(text: str, kind: str, rng: random.Random, df: dict) -> str | None:
    """One query from one title/heading/sentence, with part of its phrasing removed (module docstring).
    The words kept are a contiguous run of the line's content words (a run reads as a query; a scatter
    of words from a long sentence does not)."""
    words = words_of(text)
    if len(words) < 2:
        return None
    if kind == "sentence":
        tokens = text.split()
        alpha = sum(any(c.isalpha() for c in t) for t in tokens)
        if not 6 <= len(tokens) <= 40 or alpha < 0.8 * len(tokens) or len(words) < 4:
            return None  # fragments, tables and run-on lists are not what people remember
    if len(words) >= 4 and rng.random() < 0.5:  # drop the word BM25 would find the page by
        rare = min(words, key=lambda w: (df.get(w, 0), words.index(w)))
        words = [w for w in words if w != rare]
    n = min(len(words), rng.randint(2, 4))
    start = rng.randrange(len(words) - n + 1)
    picked = [PARAPHRASES[w] if w in PARAPHRASES and rng.random() < 0.6 else w for w in words[start : start + n]]
    query = " ".join(picked)
    if kind == "heading" and rng.random() < 0.3:
        query = rng.choice(QUESTIONS).format(query)
    return query if len(query) <= 80 else None


def _excluded() -> set:
    """Queries of the project's evaluation files: never produced as training queries."""
    root = Path(__file__).parent / "evals"
    out = set()
    qfile = root / "queries.txt"
    if qfile.exists():
        out |= {x.strip().lower() for x in qfile.read_text(encoding="utf-8").splitlines() if x.strip()}
    for path in sorted((root / "retrieval").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.add(str(json.loads(line).get("query", "")).strip().lower())
    return out


def candidates(docs, seed: int = 0) -> list:
    """Every document's candidate queries (deterministic), duplicates across documents dropped."""
    df = document_frequency(docs)
    excluded = _excluded()
    found = []
    for d in docs:
        for i, (kind, text) in enumerate(lines_of(d.body)):
            rng = random.Random(f"{seed}\0{d.path}\0{i}")
            q = make_query(text, kind, rng, df)
            if q and q.lower() not in excluded:
                found.append(CorpusQuery(q, d.path, kind, text[:200]))
    owners = {}
    for c in found:
        owners.setdefault(c.query, set()).add(c.doc)
    seen, out = set(), []
    for c in found:
        if len(owners[c.query]) == 1 and (c.query, c.doc) not in seen:
            seen.add((c.query, c.doc))
            out.append(c)
    return out


def split_documents(paths, fraction: float, seed: int = 0) -> tuple:
    """(train paths, held-out paths): a seeded shuffle of the sorted paths, `fraction` held out (at
    least one document when fraction > 0, and at least one left for training)."""
    paths = sorted(paths)
    if fraction <= 0:
        return paths, []
    if len(paths) < 2:
        raise CorpusError(f"{len(paths)} document(s): holding some out for evaluation needs at least 2")
    n = min(len(paths) - 1, max(1, round(fraction * len(paths))))
    order = random.Random(f"split\0{seed}").sample(paths, len(paths))
    held = set(order[:n])
    return [p for p in paths if p not in held], [p for p in paths if p in held]


def read_docs(corpus) -> list:
    """The corpus as QMD indexes it (retrieval.read_corpus); a missing or empty folder is a CorpusError."""
    try:
        return retrieval.read_corpus(corpus)
    except (FileNotFoundError, ValueError) as err:
        raise CorpusError(str(err)) from None


def build_queries(
    corpus, seed: int = 0, heldout: float = 0.2, per_doc: int = 6, engine=None, easy_share: float = 0.25
) -> dict:
    """{"train": [CorpusQuery], "heldout": [CorpusQuery], "docs": {"train": [...], "heldout": [...]}}.

    With `engine` (a retrieval.Engine over the same corpus), strong-signal queries are dropped and
    per document the queries the raw query does not already answer come first (module docstring)."""
    docs = read_docs(corpus)
    cands = candidates(docs, seed)
    if not cands:
        raise CorpusError(f"{corpus}: no title, heading or sentence gave a query (is it markdown prose?)")
    by_doc = {}
    for c in cands:
        by_doc.setdefault(c.doc, []).append(c)
    for doc, cs in by_doc.items():  # a seeded order per document; at most 4 x per_doc are searched
        random.Random(f"pick\0{seed}\0{doc}").shuffle(cs)
        del cs[4 * per_doc :]
    if engine is not None:  # the raw queries' vectors in one batch (several times faster than one by one)
        engine.embed_ahead([c.query for cs in by_doc.values() for c in cs])
    chosen = []
    for doc, cs in by_doc.items():
        if engine is None:
            chosen += cs[:per_doc]
            continue
        hard, easy = [], []
        for c in cs:
            if engine.strong_signal(c.query):
                continue
            c.none_ndcg = engine.score(c.query, None, {doc: 1})
            (easy if c.none_ndcg >= 1.0 else hard).append(c)
        n_easy = min(len(easy), max(per_doc - len(hard), round(per_doc * easy_share)))
        chosen += (hard[: per_doc - n_easy] + easy[:n_easy])[:per_doc]
    train_docs, held_docs = split_documents([d.path for d in docs], heldout, seed)
    held = set(held_docs)
    out = {
        "train": [c for c in chosen if c.doc not in held],
        "heldout": [c for c in chosen if c.doc in held],
        "docs": {"train": train_docs, "heldout": held_docs},
    }
    if not out["train"]:
        raise CorpusError(f"{corpus}: no training queries left ({len(chosen)} built, all on held-out documents)")
    return out


def write_jsonl(path, queries) -> None:
    runtime.atomic_write(Path(path), "".join(json.dumps(q.record(), ensure_ascii=False) + "\n" for q in queries))


@click.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for train.jsonl and heldout.jsonl (eval_retrieval.py's queries format).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of every choice (same corpus + seed = same queries).")
@click.option("--heldout", default=0.2, show_default=True, help="Share of DOCUMENTS held out with their queries.")
@click.option("--per-doc", default=6, show_default=True, help="Queries kept per document.")
@click.option(
    "--filter/--no-filter",
    "use_engine",
    default=True,
    show_default=True,
    help="Drop strong-signal queries and prefer hard ones (searches the corpus; BM25 + e5 vectors).",
)
@click.option("--vectors/--no-vectors", default=True, show_default=True, help="With --filter: use e5 vectors.")
def cli(corpus, out_dir, seed, heldout, per_doc, use_engine, vectors):
    """Build label-free training queries from the markdown folder CORPUS."""  # fmt: skip

    def body():
        read_docs(corpus)  # a clear error before any embedding work
        engine = retrieval.Engine(corpus, vectors=vectors) if use_engine else None
        built = build_queries(corpus, seed, heldout, per_doc, engine)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(out_dir / "train.jsonl", built["train"])
        write_jsonl(out_dir / "heldout.jsonl", built["heldout"])
        d = built["docs"]
        click.echo(
            f"{len(built['train'])} training queries from {len(d['train'])} documents, {len(built['heldout'])} held-out "
            f"from {len(d['heldout'])} documents -> {out_dir}"
        )

    runtime.run_command(body)


if __name__ == "__main__":
    cli()
