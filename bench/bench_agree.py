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

    python bench/bench_agree.py --retrieval notes.json --retrieval docs.json     # eval_retrieval.py -o reports

A third opinion, the one the rubric stands in for: does a higher score mean QMD finds the right document
more often? For every model source of an eval_retrieval.py report, every engine and every query, the
expansion's score is set against its retrieval lift (nDCG@10 with the expansion minus `none`, the raw
query alone), and the two are rank-correlated (Spearman, average ranks for ties), overall and per
category, pooled over the report's sources, with a 95% interval from resampling queries (a query
brings all its sources' points, which are not independent). Twice: with reward.py as it is and with
the rubric before issue 21's breakage rules (reward.py at OLD_RUBRIC_COMMIT, loaded from git into a
temp module; the old scorer has no truncation flag). Queries QMD answered from BM25 alone (strong
signal: the expansion is never searched, the lift is 0 whatever it says) are counted apart as well,
and so are the points whose ranking the expansion changed at all (most lifts are exact ties at 0).
--qmd-reward is optional with --retrieval.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import reward  # noqa: E402

# reward.py's last commit before the breakage rubric (3088b46, issue 21), which reached main through
# f3e107b and again through d0e117c "Merge branch 'reward'"; d0e117c's first parent already has it.
OLD_RUBRIC_COMMIT = "5e2d143"


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


def load_old_rubric(commit: str = OLD_RUBRIC_COMMIT):
    """reward.py as of `commit`, read with `git show` into a temp file and imported under another name
    (it imports the current prompt.py; nothing in the work tree changes)."""
    try:
        src = subprocess.run(
            ["git", "show", f"{commit}:reward.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise click.ClickException(f"cannot read reward.py at {commit} from git ({exc})") from None
    with tempfile.NamedTemporaryFile("w", suffix=".py", prefix="reward_old_", delete=False, encoding="utf-8") as f:
        f.write(src)
    name = f"reward_{commit}"
    spec = importlib.util.spec_from_file_location(name, f.name)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(mod)
    finally:
        Path(f.name).unlink()
    return mod


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return (sums / counts)[inverse]


def spearman(x, y) -> float | None:
    """Spearman's rho: Pearson's r of the average ranks; None when either side is constant (or n < 3)."""
    if len(x) < 3:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return None if den == 0 else float((rx * ry).sum() / den)


def spearman_ci(points, n_boot: int = 1000, seed: int = 0) -> tuple:
    """(rho, low, high): points are (cluster, x, y); clusters (queries) are resampled with replacement."""
    rho = spearman([p[1] for p in points], [p[2] for p in points])
    by = defaultdict(list)
    for c, x, y in points:
        by[c].append((x, y))
    keys = list(by)
    if rho is None or len(keys) < 3:
        return rho, None, None
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        pick = [by[keys[i]] for i in rng.integers(0, len(keys), len(keys))]
        xs = [x for g in pick for x, _ in g]
        ys = [y for g in pick for _, y in g]
        r = spearman(xs, ys)
        if r is not None:
            boots.append(r)
    if not boots:
        return rho, None, None
    return rho, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def retrieval_points(report: dict, rubrics: dict) -> dict:
    """{engine: [point]} with a point per (model source, query): category, query, source, lift, strong
    signal, and each rubric's score of the source's text."""
    queries = report["queries"]
    cache = {}
    out = {}
    for eng, res in report["engines"].items():
        none = res["runs"]["none"]["per_query"]
        pts = []
        for src, run in res["runs"].items():
            if src == "none":
                continue
            exps = report["sources"][src]["expansions"]
            for i, (q, r) in enumerate(zip(queries, run["per_query"])):
                text, cut = exps[i]["text"] or "", bool(exps[i].get("truncated"))
                key = (q["query"], text, cut)
                if key not in cache:
                    cache[key] = {name: fn(q["query"], text, cut) for name, fn in rubrics.items()}
                pts.append(
                    {
                        "query": q["query"],
                        "category": q.get("category", ""),
                        "source": src,
                        "lift": r["ndcg@10"] - none[i]["ndcg@10"],
                        "strong_signal": bool(r["strong_signal"]),
                        "scores": cache[key],
                    }
                )
        out[eng] = pts
    return out


def correlate(points: list, rubrics, n_boot: int = 1000) -> dict:
    """Spearman rho [95% CI] of each rubric's score against the lift: overall, searched only, per category."""

    def rhos(pts):
        row = {"n": len(pts), "queries": len({p["query"] for p in pts}), "changed": sum(p["lift"] != 0 for p in pts)}
        for name in rubrics:
            rho, lo, hi = spearman_ci([(p["query"], p["scores"][name], p["lift"]) for p in pts], n_boot)
            row[name] = {"rho": rho, "low": lo, "high": hi}
        return row

    cats = defaultdict(list)
    for p in points:
        cats[p["category"]].append(p)
    return {
        "overall": rhos(points),
        "searched": rhos([p for p in points if not p["strong_signal"]]),
        "changed": rhos([p for p in points if p["lift"] != 0]),
        "per_category": {c: rhos(ps) for c, ps in sorted(cats.items())},
        "per_source": {
            s: rhos([p for p in points if p["source"] == s]) for s in dict.fromkeys(p["source"] for p in points)
        },
    }


def _rho(d) -> str:
    if d["rho"] is None:
        return "n/a"
    if d["low"] is None:
        return f"{d['rho']:+.2f}"
    return f"{d['rho']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def show_retrieval(name: str, res: dict, rubrics) -> None:
    print(f"\n## {name}")
    print("| queries | points (source x query) | lift != 0 | " + " | ".join(f"rho, {r}" for r in rubrics) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in rubrics) + " |")
    rows = [("all", res["overall"]), ("expansion searched (no strong signal)", res["searched"])]
    rows += [("only where the ranking changed (lift != 0)", res["changed"])]
    rows += [(f"category {c}", v) for c, v in res["per_category"].items()]
    rows += [(f"source {s}", v) for s, v in res["per_source"].items()]
    for label, v in rows:
        print(
            f"| {label} ({v['queries']}) | {v['n']} | {v['changed']} | "
            + " | ".join(_rho(v[r]) for r in rubrics)
            + " |"
        )


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
    type=click.Path(path_type=Path),
    help="A QMD checkout (its finetune/reward.py is used) or the reward.py file itself.",
)
@click.option(
    "--retrieval",
    "retrieval_reports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="eval_retrieval.py -o report(s): rank-correlate the rubric's score with each expansion's nDCG@10 lift.",
)
@click.option(
    "--old-rubric", default=OLD_RUBRIC_COMMIT, show_default=True, help="Commit of the rubric to compare with."
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
def main(qmd_path, retrieval_reports, old_rubric, evals, broken, with_data, limit, json_out):
    if retrieval_reports:
        old = load_old_rubric(old_rubric)
        rubrics = {
            "reward.py now": lambda q, t, cut: reward.score(q, t, truncated=cut).percentage,
            f"before issue 21 ({old_rubric})": lambda q, t, cut: old.score(q, t).percentage,
        }
        if qmd_path:
            qmd = load_qmd_reward(qmd_path)
            rubrics["QMD's reward.py"] = lambda q, t, cut: float(qmd.score_expansion_detailed(q, t)["percentage"])
        results = {}
        for path in retrieval_reports:
            report = json.loads(path.read_text(encoding="utf-8"))
            for eng, pts in retrieval_points(report, rubrics).items():
                name = f"{path} ({report['config'].get('corpus_name', '')}), engine {eng}: score vs nDCG@10 lift"
                results[name] = correlate(pts, rubrics) | {"points": pts}
                show_retrieval(name, results[name], rubrics)
        if json_out:
            json_out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"\nrows written to {json_out}")
        return
    if not qmd_path:
        raise click.UsageError("give --qmd-reward (a QMD checkout) or --retrieval REPORT.json")
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
