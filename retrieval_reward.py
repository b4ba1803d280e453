"""A GRPO reward for what expansions are for: does QMD find the page the query came from?

    python grpo.py --reward retrieval --corpus ~/notes --sft-adapter adapters/sft --adapter-path adapters/notes-grpo

The training queries come from the corpus itself (corpus_queries.py: titles, headings and sentences
with part of their phrasing removed, each tied to its source page; train and held-out split by
page). Every sampled completion is then scored as

    gate     = reward.py's verdict: a hard failure (malformed output, a truncated completion, breakage
               the rubric calls fatal) or a format-invalid output (no lex or no vec line) scores 0
    search   = retrieval.Engine.score(query, completion, {source page: 1}): what QMD would search with
               this completion (its query-word filter, its fallbacks, lines equal to the query
               dropped), run through QMD's hybrid pipeline (BM25 + lex lines + e5 vectors, RRF with
               the original query at weight 2, strong-signal skip), scored by nDCG@10 (or MRR@10 /
               recall@10: `retrieval_metric`) of the source page
    reward   = 0 if gated, else (1 - w) * search + w * rubric          (w = `rubric_weight`, 0.3)

Why a weighted sum behind a gate, not a product and not retrieval alone: the gate keeps format from
degrading (an output QMD cannot use earns nothing, whatever it would have found), and the rubric
share keeps the rubric's quality signal where retrieval ties: for many queries every completion puts
the page at the same rank (GRPO's advantages are relative to the group, so a tie carries no signal),
and there the rubric still prefers the better-formed expansion. A product would let a completion
that finds nothing (search 0) tie with a malformed one and lose the rubric's signal exactly where
retrieval has none. Because advantages are group-relative, subtracting the raw query's own score
(a per-query constant) would change nothing, so the reward is the plain metric.

Cost: the index and the e5 embeddings of the corpus are built once per run (embeddings cached on
disk by content hash, so a second run reads them); a completion then costs reward.py (~50 us), one
FTS5 query per new lex line (sub-millisecond) and one e5 embedding per new vec/hyde line. `prepare()`
embeds all of a step's new vec/hyde lines in one batch before they are scored (grpo.score calls it);
`retrieval_vectors: false` gives BM25 + lex lines only (what QMD does without `qmd embed`), well
under a millisecond a completion. bench/bench_retrieval_reward.py measures both.
"""

from __future__ import annotations

from pathlib import Path

import corpus_queries
import retrieval
import reward

REWARD_KEYS = ("corpus", "corpus_heldout", "rubric_weight", "retrieval_metric", "retrieval_vectors")


def gate(s) -> bool:
    """reward.py's verdict `s` closes the gate: a hard failure or a format-invalid output scores 0."""
    return s.hard_failure is not None or not s.format_valid


class RetrievalReward:
    """reward_fn for grpo.train_grpo: (query, text, truncated=) -> (reward, format-valid)."""

    def __init__(self, engine, relevant: dict, rubric_weight: float = 0.3, metric: str = "ndcg@10"):
        if metric not in retrieval.METRICS:
            raise ValueError(f"retrieval_metric {metric!r}: one of {', '.join(retrieval.METRICS)}")
        self.engine, self.relevant = engine, dict(relevant)
        self.rubric_weight, self.metric = float(rubric_weight), metric
        self.calls = 0

    def parts(self, query: str, text: str, truncated: bool = False) -> dict:
        """{"gated", "rubric", "search", "reward", "valid"}: the reward and what it is made of."""
        if query not in self.relevant:
            raise KeyError(f"{query!r} is not a query of this reward's corpus (no source document known)")
        s = reward.score(query, text, truncated=truncated)
        gated = gate(s)
        search = 0.0 if gated else self.engine.score(query, text, self.relevant[query], self.metric)
        r = 0.0 if gated else (1.0 - self.rubric_weight) * search + self.rubric_weight * s.reward
        return {"gated": gated, "rubric": s.reward, "search": search, "reward": r, "valid": s.format_valid}

    def __call__(self, query: str, text: str, truncated: bool = False) -> tuple:
        self.calls += 1
        p = self.parts(query, text, truncated)
        return p["reward"], p["valid"]

    def gated(self, query: str, text: str, truncated: bool = False) -> bool:
        """True when reward.py's gate scores this completion 0 before any search."""
        return gate(reward.score(query, text, truncated=truncated))

    def prepare(self, items) -> None:
        """Embed every new vec/hyde line of [(query, text)] or [(query, text, truncated)] in one batch
        (before they are scored one by one). Completions the gate scores 0 are never searched, so
        their lines are not embedded (early in a run 10-25% of the rollouts: cut at the cap or
        format-invalid)."""
        if self.engine.embedder is None:
            return
        keep = [(it[0], it[1]) for it in items if not self.gated(*it)]
        texts = [t for q, x in keep for k, t in retrieval.qmd_expansion(q, x) if k != "lex"]
        if texts:
            self.engine.embed_ahead(texts)


def from_queries(corpus, queries, vectors: bool = True, rubric_weight: float = 0.3, metric: str = "ndcg@10"):
    """A RetrievalReward over `corpus` for CorpusQuery objects or eval_retrieval-style dicts."""
    engine = retrieval.Engine(corpus, vectors=vectors)
    relevant = {}
    for q in queries:
        rec = q.record() if hasattr(q, "record") else q
        relevant[rec["query"]] = rec["relevant"]
    return RetrievalReward(engine, relevant, rubric_weight, metric)


def setup(cfg, echo=print) -> dict:
    """What grpo.py needs for `reward: retrieval`: {"scorer", "train", "heldout", "docs"}. The engine
    (index + embeddings) is built once here and shared by the query filter and the reward."""
    corpus = cfg.get("corpus")
    if not corpus:
        raise corpus_queries.CorpusError("reward: retrieval needs a corpus folder (--corpus DIR or `corpus:` in YAML)")
    corpus_queries.read_docs(corpus)  # missing or empty: a clear error before any embedding work
    echo(f"retrieval reward: indexing {corpus} (embeddings cached in {retrieval.cache_dir()}) ...")
    engine = retrieval.Engine(corpus, vectors=cfg["retrieval_vectors"])
    built = corpus_queries.build_queries(corpus, seed=cfg["seed"], heldout=cfg["corpus_heldout"], engine=engine)
    relevant = {q.query: {q.doc: 1} for q in built["train"] + built["heldout"]}
    scorer = RetrievalReward(engine, relevant, cfg["rubric_weight"], cfg["retrieval_metric"])
    d = built["docs"]
    echo(
        f"retrieval reward: {len(engine.docs)} documents, {len(built['train'])} training queries from "
        f"{len(d['train'])}, {len(built['heldout'])} held-out from {len(d['heldout'])} "
        f"({'BM25 + e5 vectors' if engine.embedder else 'BM25 + lex only'}, {cfg['retrieval_metric']}, "
        f"rubric weight {cfg['rubric_weight']})"
    )
    return {"scorer": scorer, "train": built["train"], "heldout": built["heldout"], "docs": d}


def write_split(out: Path, built: dict) -> None:
    """The run's corpus queries beside its config: eval_retrieval.py --queries OUT/corpus-heldout.jsonl."""
    corpus_queries.write_jsonl(Path(out) / "corpus-train.jsonl", built["train"])
    corpus_queries.write_jsonl(Path(out) / "corpus-heldout.jsonl", built["heldout"])
