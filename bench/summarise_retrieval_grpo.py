"""Issue 18's evidence table from eval_retrieval.py reports: SFT vs GRPO (retrieval reward) vs GRPO (rubric).

    python bench/summarise_retrieval_grpo.py adapters/evidence      # reads SET-ADAPTER.json, prints markdown

For every query set (pip held-out, notes, docs) and GRPO adapter: nDCG@10 of the `tuned` source on
the hybrid engine, its difference from the SFT adapter's on the same queries with a paired bootstrap
95% interval (queries resampled, seed 0, 2000 resamples: eval_retrieval's machinery) and wins/ties/
losses, the `none` baseline, the format-valid rate and the reward.py average of the expansions the
evaluation generated (QMD's sampling), and how many were truncated.
"""

import json
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import retrieval  # noqa: E402
import reward  # noqa: E402

SETS = [("pip", "pip docs, held-out pages"), ("notes", "notes (unseen)"), ("docs", "Flask + pytest docs (unseen)")]
ADAPTERS = [("demo", "SFT (adapters/demo)"), ("demo-grpo-retrieval", "+ GRPO, retrieval reward"),
            ("demo-grpo-rubric", "+ GRPO, rubric reward")]  # fmt: skip


def load(folder, s, a):
    p = Path(folder) / f"{s}-{a}.json"
    return json.loads(p.read_text()) if p.exists() else None


def source(rep) -> str:
    """The report's model source: `tuned` (eval_retrieval --adapter) or `file:exp-NAME` (eval_retrieval_grpo.py)."""
    return next(s for s in rep["sources"] if s != "none")


def rubric(rep) -> dict:
    rows = rep["sources"][source(rep)]["expansions"]
    scores = [reward.score(r["query"], r["text"] or "", truncated=r["truncated"]) for r in rows]
    return {
        "format_valid": sum(s.format_valid for s in scores) / len(scores),
        "reward": sum(s.reward for s in scores) / len(scores),
        "truncated": sum(r["truncated"] for r in rows),
    }


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
def main(folder):
    """Print the table (markdown)."""
    mine, runs = Path(folder) / "pip-heldout.jsonl", Path("adapters/demo-grpo-retrieval/corpus-heldout.jsonl")
    if mine.exists() and runs.exists():
        same = mine.read_text() == runs.read_text()
        print(f"pip held-out queries {'are' if same else 'are NOT'} the GRPO run's own corpus-heldout.jsonl\n")
    print("| set | adapter | nDCG@10 | vs SFT [95% CI] | W/T/L | `none` | format-valid | reward.py avg | truncated |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s, set_name in SETS:
        base = load(folder, s, "demo")
        for a, name in ADAPTERS:
            rep = load(folder, s, a)
            if rep is None:
                print(f"| {set_name} | {name} | not run | | | | | | |")
                continue
            run = rep["engines"]["hybrid"]["runs"]
            tuned = [r["ndcg@10"] for r in run[source(rep)]["per_query"]]
            cell, wtl = "-", "-"
            if base is not None and a != "demo":
                b_run = base["engines"]["hybrid"]["runs"][source(base)]
                ref = {r["query"]: r["ndcg@10"] for r in b_run["per_query"]}
                qs = [r["query"] for r in run[source(rep)]["per_query"]]
                assert set(qs) == set(ref), f"{s}: {a} and SFT were run on different queries"
                xa = [ref[q] for q in qs]
                ci = retrieval.paired_bootstrap(xa, tuned, 2000, 0)
                w = retrieval.wins_ties_losses(xa, tuned)
                cell = f"{ci['mean']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
                wtl = f"{w['wins']}/{w['ties']}/{w['losses']}"
            r = rubric(rep)
            print(
                f"| {set_name} ({len(tuned)} q) | {name} | {sum(tuned) / len(tuned):.3f} | {cell} | {wtl} | "
                f"{run['none']['overall']['ndcg@10']:.3f} | {100 * r['format_valid']:.1f}% | {100 * r['reward']:.1f}% | "
                f"{r['truncated']} |"
            )


if __name__ == "__main__":
    main()
