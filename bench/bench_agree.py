"""A second opinion: how often reward.py's rating agrees with QMD's own finetune/reward.py.

    python bench/bench_agree.py --qmd-reward ~/src/qmd                 # a QMD checkout, or its reward.py
    python bench/bench_agree.py --qmd-reward ~/src/qmd --eval adapters/demo/eval.json --json agree.json

QMD's scorer is the rubric this project's rubric started from; where the two disagree, one of them is
wrong about the output, and the list of disagreements is where to look. It is imported from the path
you give (nothing of it is copied here) and called as QMD calls it, score_expansion_detailed(query,
text); ours is reward.score(query, text, truncated). Three kinds of set are compared:

  * eval outputs: the `results` of eval reports (eval.py / eval.py --qmd), by default every
    adapters/demo*/eval*.json; a record marked truncated is a failure for us and plain text for QMD;
  * evals/broken.jsonl, the broken expansions (`text`), each rated Excellent by neither, ideally;
  * the same file's repaired twins (`repaired`) and its controls (good data examples, kind `control`),
    which both should rate Excellent;
  * the training data itself (data/*.jsonl, each target as the model would write it; --no-data skips it).

For each set: agreement on "Excellent or not" (both Excellent / both not / only ours / only QMD's), its
Cohen's kappa (agreement beyond what the two Excellent rates give by chance), agreement on the exact
five-step rating, and every disagreement with both scores, our breakage kinds and QMD's deductions.
Not part of `make bench`: it needs a QMD checkout (`git clone https://github.com/tobi/qmd`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402


def load_qmd_reward(path: Path):
    """QMD's finetune/reward.py as a module, from a checkout folder or the file itself."""
    path = path.expanduser()
    if path.is_dir():
        path = path / "finetune" / "reward.py"
    if not path.is_file():
        raise click.BadParameter(f"{path}: not found (give a QMD checkout or its finetune/reward.py)")
    spec = importlib.util.spec_from_file_location("qmd_finetune_reward", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "score_expansion_detailed"):
        raise click.BadParameter(f"{path}: has no score_expansion_detailed(query, text)")
    return mod


def eval_items(path: Path) -> list:
    """(query, text, truncated, label) from an eval report's results."""
    d = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for r in d.get("results", []):
        text = reward._record_text(r)
        if isinstance(r.get("query"), str) and isinstance(text, str):
            out.append((r["query"], text, reward.record_truncated(r), r.get("category", "")))
    return out


def broken_items(path: Path, field: str, controls: bool = False) -> list:
    """(query, text, truncated, kind) of the broken expansions (field "text"), their repaired twins
    (field "repaired"), or with controls=True the good data examples the file holds as controls."""
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            r = json.loads(raw)
            if isinstance(r.get(field), str) and (r.get("kind") == "control") == controls:
                # the flag marks the broken text as cut at the token cap; a repaired twin is complete
                cut = field == "text" and bool(r.get("truncated"))
                out.append((r["query"], r[field], cut, r.get("kind", "")))
    return out


def kappa(a: list, b: list) -> float | None:
    """Cohen's kappa of two parallel lists of booleans (None when chance agreement is total)."""
    n = len(a)
    if not n:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    return None if pe == 1 else (po - pe) / (1 - pe)


def compare(qmd, items: list) -> dict:
    rows = []
    for query, text, cut, label in items:
        ours = reward.score(query, text, truncated=cut)
        theirs = qmd.score_expansion_detailed(query, text)
        rows.append(
            {
                "query": query,
                "label": label,
                "truncated": cut,
                "text": text,
                "ours": round(ours.percentage, 1),
                "ours_rating": ours.rating,
                "ours_issues": ours.issues,
                "qmd": float(theirs["percentage"]),
                "qmd_rating": theirs["rating"],
                "qmd_deductions": [str(x) for x in theirs.get("deductions", [])],
            }
        )
    ours_x = [r["ours_rating"] == "Excellent" for r in rows]
    qmd_x = [r["qmd_rating"] == "Excellent" for r in rows]
    n = len(rows)
    k = kappa(ours_x, qmd_x)
    return {
        "n": n,
        "both_excellent": sum(a and b for a, b in zip(ours_x, qmd_x)),
        "both_not": sum(not a and not b for a, b in zip(ours_x, qmd_x)),
        "only_ours": sum(a and not b for a, b in zip(ours_x, qmd_x)),
        "only_qmd": sum(b and not a for a, b in zip(ours_x, qmd_x)),
        "agree": sum(a == b for a, b in zip(ours_x, qmd_x)) / n if n else None,
        "kappa": None if k is None else round(k, 3),
        "same_rating": sum(r["ours_rating"] == r["qmd_rating"] for r in rows) / n if n else None,
        "ours_excellent": sum(ours_x),
        "qmd_excellent": sum(qmd_x),
        "rows": rows,
    }


def show(name: str, res: dict, limit: int) -> None:
    n = res["n"]
    if not n:
        print(f"\n## {name}: no records")
        return
    kap = "n/a (one side rates all alike)" if res["kappa"] is None else f"{res['kappa']:.2f}"
    print(f"\n## {name}: {n} outputs")
    print(
        f"Excellent: ours {res['ours_excellent']}/{n}, QMD's {res['qmd_excellent']}/{n} | agree on Excellent-or-not "
        f"{res['agree']:.1%} (both Excellent {res['both_excellent']}, both not {res['both_not']}, only ours "
        f"{res['only_ours']}, only QMD's {res['only_qmd']}), kappa {kap} | same five-step rating {res['same_rating']:.1%}"
    )
    dis = [r for r in res["rows"] if (r["ours_rating"] == "Excellent") != (r["qmd_rating"] == "Excellent")]
    for r in dis[:limit]:
        side = "only ours Excellent" if r["ours_rating"] == "Excellent" else "only QMD's Excellent"
        label = f" [{r['label']}]" if r["label"] else ""
        cut = " (truncated)" if r["truncated"] else ""
        print(f"- {side}{label}{cut}: {r['query']!r}")
        print(
            f"    ours {r['ours']:.1f}% {r['ours_rating']}"
            + (f" ({', '.join(r['ours_issues'])})" if r["ours_issues"] else "")
            + f" | QMD {r['qmd']:.1f}% {r['qmd_rating']}"
            + (f" ({'; '.join(d[:50] for d in r['qmd_deductions'][:3])})" if r["qmd_deductions"] else "")
        )
        first = " / ".join(ln.strip() for ln in r["text"].splitlines()[:3])
        print(f"    {first[:160]}")
    if len(dis) > limit:
        print(f"- ... {len(dis) - limit} more (--limit, or --json for all)")


@click.command()
@click.option(
    "--qmd-reward",
    "qmd_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A QMD checkout (its finetune/reward.py is used) or the reward.py file itself.",
)
@click.option(
    "--eval",
    "evals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Eval report(s) to compare on [default: adapters/demo*/eval*.json].",
)
@click.option(
    "--broken",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=ROOT / "evals" / "broken.jsonl",
    show_default=True,
    help="Broken expansions with repaired twins.",
)
@click.option("--data/--no-data", "with_data", default=True, show_default=True, help="Also compare on data/*.jsonl.")
@click.option("--limit", default=40, show_default=True, help="Disagreements listed per set.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write every row here.")
def main(qmd_path, evals, broken, with_data, limit, json_out):
    qmd = load_qmd_reward(qmd_path)
    evals = list(evals) or sorted((ROOT / "adapters").glob("demo*/eval*.json"))
    sets = {}
    for p in evals:
        sets[f"eval outputs {p}"] = eval_items(p)
    if not evals:
        print("no eval reports given and none in adapters/demo*/eval*.json: eval outputs not compared")
    sets[f"broken expansions ({broken.name}, text)"] = broken_items(broken, "text")
    sets[f"their repaired twins ({broken.name}, repaired)"] = broken_items(broken, "repaired")
    sets[f"good controls from data/ ({broken.name}, kind control)"] = broken_items(broken, "text", controls=True)
    if with_data:
        import data
        from prompt import render_target

        sets["the training data (data/*.jsonl)"] = [
            (e.query, render_target(e.output), False, e.extra.get("category", "")) for e in data.load_examples()
        ]
    print(f"# reward.py against QMD's {Path(qmd.__file__)}")
    results = {}
    for name, items in sets.items():
        results[name] = compare(qmd, items)
        show(name, results[name], limit)
    if json_out:
        json_out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nrows written to {json_out}")


if __name__ == "__main__":
    main()
