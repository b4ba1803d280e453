"""retrieval_reward.py throughput: completions scored per second, against reward.py alone in the same run.

    python bench/bench_retrieval_reward.py [--corpus evals/retrieval/notes] [--n 256] [--quick]

The completions are real expansions: the first N examples of data/*.jsonl rendered as `type: text`
lines (prompt.render_target), each tied to a document of the corpus (round robin: where the page
lands does not change what a search costs). They are scored the way GRPO scores a step, in steps of
8 (B=2 x G=4): prepare() on the step's completions, then one call each. Rows:
  * baseline: reward.py alone (reward.score), the same completions;
  * BM25 + lex lines (retrieval_vectors: false): what QMD searches without `qmd embed`;
  * with e5 vectors, warm: every vec/hyde line already embedded (a group's repeated lines, a second
    epoch, a resumed run);
  * with e5 vectors, cold: every vec/hyde line new (the worst case, and the usual one for sampled
    text). The disk cache is copied to a temp folder first, so the corpus's chunks are read from
    it, the new lines are embedded for real, and the user's cache is left as it was.
The index (and the corpus's embeddings) are built before timing: a run builds them once.
Target: a few milliseconds a completion ("<=5 ms").
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import common


def timed(fn, items, step=8) -> float:
    """Seconds per completion, scoring in GRPO-sized steps with prepare() first."""
    t = time.perf_counter()
    for i in range(0, len(items), step):
        part = items[i : i + step]
        if hasattr(fn, "prepare"):
            fn.prepare(part)
        for q, text in part:
            fn(q, text)
    return (time.perf_counter() - t) / len(items)


@click.command()
@click.option("--corpus", default="evals/retrieval/notes", show_default=True, help="Markdown folder to search.")
@click.option("--n", "n_items", default=256, show_default=True, help="Completions scored per row.")
@click.option("--quick", is_flag=True, help="Smoke run: 32 completions, nothing written to results.md.")
def main(corpus, n_items, quick):
    import data
    import retrieval
    import retrieval_reward
    import reward
    from prompt import render_target

    if quick:
        n_items = 32
    examples = data.load_examples()[:n_items]
    items = [(e.query, render_target(e.output)) for e in examples]
    bm25 = retrieval.Engine(corpus, vectors=False)
    paths = [d.path for d in bm25.docs]
    relevant = {q: {paths[i % len(paths)]: 1} for i, (q, _) in enumerate(items)}

    def rubric(q, text):
        return reward.score(q, text).reward

    timed(rubric, items)  # warm-up: reward.py's lexicon, regexes
    base = timed(rubric, items)
    lex = timed(retrieval_reward.RetrievalReward(bm25, relevant), items)

    src = retrieval.cache_dir() / "embeddings.sqlite"
    with tempfile.TemporaryDirectory() as tmp:
        if src.exists():
            shutil.copy(src, Path(tmp) / "embeddings.sqlite")
        os.environ["QMD_RETRIEVAL_CACHE"] = tmp
        t0 = time.perf_counter()
        engine = retrieval.Engine(corpus)
        index_s = time.perf_counter() - t0
        fn = retrieval_reward.RetrievalReward(engine, relevant)
        new = {t for q, x in items for k, t in retrieval.qmd_expansion(q, x) if k != "lex"}
        cold = timed(fn, items)
        warm = timed(fn, items)

    n = len(items)
    note = (
        f"{n} data/ expansions ({len(new)} distinct vec/hyde lines), {len(paths)} documents of {corpus}, steps of 8 "
        f"with prepare(); index + corpus embeddings {index_s:.1f}s once, before timing"
    )
    for name, sec in [
        ("BM25 + lex lines", lex),
        ("BM25 + e5 vectors, lines already embedded", warm),
        ("BM25 + e5 vectors, every vec/hyde line new", cold),
    ]:
        common.record(
            f"retrieval reward, {name}",
            f"{1 / sec:,.0f} completions/s ({1000 * sec:.2f} ms each)",
            f"reward.py alone {1 / base:,.0f}/s ({1000 * base:.3f} ms)",
            5e-3 / sec,
            ">=1x",
            note + "; ratio = 5 ms target / ms per completion",
            save=not quick,
        )


if __name__ == "__main__":
    main()
