"""Issue 18's evaluation in one process per adapter: expansions for three query sets, then eval_retrieval.

    python bench/eval_retrieval_grpo.py adapters/demo adapters/demo-grpo-retrieval -o adapters/evidence

Why one process: on a shared 2-core machine every heavy command waits for the CPU lock, and
eval_retrieval.py --adapter loads the model and generates once per corpus. Here each adapter is
loaded once and its expansions for all three sets are generated together, exactly as
eval_retrieval.py generates them (eval.generate_batch with QMD's sampling, seed 0 unless --seed, 256 tokens, 64
prompts a batch); each set is then scored by eval_retrieval.py itself from the saved expansions
(`--expansions`, hybrid engine), one report per set and adapter: OUT/SET-NAME.json.

The sets: the held-out pages of the pip training corpus (corpus_queries.build_queries with the
GRPO run's settings: seed 0, 20% of documents held out, e5 vectors; the same split the run writes
to corpus-heldout.jsonl, checked by bench/summarise_retrieval_grpo.py), the notes set and the docs
set of evals/retrieval (never seen by training).
"""

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime  # noqa: E402

runtime.ensure_fast_blas()

SETS = {
    "pip": ("adapters/corpus-pip", None),  # queries: built (OUT/pip-heldout.jsonl)
    "notes": ("evals/retrieval/notes", "evals/retrieval/notes.jsonl"),
    "docs": ("adapters/corpus-docs", "evals/retrieval/docs.jsonl"),
}


@click.command()
@click.argument("adapters", nargs=-1, required=True)
@click.option("--output", "-o", "out", default="adapters/evidence", show_default=True)
@click.option("--max-tokens", default=256, show_default=True)
@click.option("--sets", default="pip,notes,docs", show_default=True, help="Comma-separated sets to evaluate.")
@click.option("--limit", type=int, help="Smoke test: the first N queries of each set.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed (another seed: how much one sample varies).")
def main(adapters, out, max_tokens, sets, limit, seed):
    import mlx.core as mx

    import convert
    import corpus_queries
    import eval as ev
    import eval_retrieval
    import retrieval

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = sets.split(",")
    pip_q = out / "pip-heldout.jsonl"
    if "pip" in wanted and not pip_q.exists():
        engine = retrieval.Engine(SETS["pip"][0])
        built = corpus_queries.build_queries(SETS["pip"][0], seed=0, heldout=0.2, engine=engine)
        corpus_queries.write_jsonl(pip_q, built["heldout"])
    queries = {}
    for name, (corpus, qfile) in SETS.items():
        if name not in wanted:
            continue
        qfile = Path(qfile or pip_q)
        docs = [d.path for d in retrieval.read_corpus(corpus)]
        qs = eval_retrieval.read_retrieval_queries(qfile, docs)
        if limit:
            qs = qs[:limit]
            qfile = out / f"limit-{name}.jsonl"
            qfile.write_text("".join(json.dumps(q) + "\n" for q in qs))
        queries[name] = (corpus, qfile, [q["query"] for q in qs])
    union = list(dict.fromkeys(q for _, _, qs in queries.values() for q in qs))
    for adapter in adapters:
        name = Path(adapter).name
        click.echo(f"{name}: generating {len(union)} expansions ...", err=True)
        model, tok = runtime.load_model(runtime.adapter_base_model(adapter), adapter)
        mx.random.seed(seed)
        texts, stats = ev.generate_batch(model, tok, union, max_tokens, 64, None, **convert.QMD_SAMPLING)
        exp = out / f"exp-{name}.json"
        results = [{"query": q, "text": t, "truncated": c} for q, t, c in zip(union, texts, stats["truncated"])]
        runtime.atomic_write_json(exp, {"results": results, "adapter": adapter, "max_tokens": max_tokens})
        del model
        for set_name, (corpus, qfile, _) in queries.items():
            args = ["--corpus", corpus, "--queries", str(qfile), "--expansions", str(exp), "--engine", "hybrid"]
            eval_retrieval.cli([*args, "-o", str(out / f"{set_name}-{name}.json")], standalone_mode=False)
    click.echo(json.dumps({"done": list(adapters)}), err=True)


if __name__ == "__main__":
    main()
