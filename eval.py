"""Generate expansions for test queries and score them with reward.py.

    python eval.py --model Qwen/Qwen3-1.7B --adapter adapters/sft            # evals/queries.txt
    python eval.py --model M --adapter A --baseline                          # also the untuned model, with gains
    python eval.py --model M --adapter A --temp 0.7 --top-p 0.8 --top-k 20   # sample like QMD does
    python eval.py --model M --output scores.json --min-score 0.8            # CI gate
    python eval.py --compare before.json after.json                          # two runs side by side
    python eval.py --score-only outputs.jsonl                                # score existing outputs
    python eval.py --interactive --model M --adapter A                       # type queries, see scores
    python eval.py --gguf adapters/gguf/qmd-query-expansion-q8_0.gguf -o adapters/gguf/eval-q8_0.json
                                                                # llama.cpp, QMD's grammar and sampling
    python eval.py --qmd adapters/gguf/qmd-query-expansion-q8_0.gguf   # inside the real QMD (make qmd)

Generation goes through decode.py's batched sampler (each prompt prefilled once, all rows decoded
together; `--sequential` uses mlx-lm's generator one query at a time, for benchmarks) with the
prompt contract from prompt.py, greedy unless a temperature is given.
grpo.py uses `evaluate()` and `format_report()` from here, so every evaluation reads the same.

An output that reached --max-tokens without the end token is marked truncated (from decode.py's
Sample.finished, mlx-lm's finish_reason, llama.cpp's finish_reason "length"; `--score-only` reads a
per-record "truncated" flag) and scores as a failure. The report counts each breakage kind of reward.py
across the outputs ("repeated words 7, off-topic vec 3, truncated 2"); `--compare` lists them per run.

`--gguf FILE` evaluates an exported GGUF (convert.py) through llama.cpp (llama-cpp-python) the way
QMD runs it: the prompt rendered by the GGUF's own chat template, QMD's GBNF grammar (only
`lex|vec|hyde: ...` lines), its sampling (temperature 0.7, top-k 20, top-p 0.8, no presence penalty -
see prompt.QMD_SAMPLING; up to 600 tokens, context 2048) unless flags say otherwise, and the same scores and
report as the MLX path. `--temp 0 --no-grammar` reproduces MLX's greedy decoding for comparisons.

`--qmd FILE` goes one step further and runs the GGUF inside the real QMD (`make qmd`, qmd_harness):
QMD's own `expandQuery`, so node-llama-cpp's chat wrapper and default system prompt, QMD's grammar,
sampling (fixed by QMD: no sampling flags), query-word filter and fallbacks. The completion QMD's
model wrote is scored as usual; the report adds what QMD made of it: how often it fell back (every
line filtered, or an error), the share of lines its filter dropped, tokens and seconds per query.
"""

from __future__ import annotations

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

import reward  # noqa: E402
from data import EVAL_QUERIES, DataError, jsonl_records, read_queries  # noqa: E402

# ----------------------------------------------------------------------------
# Generation


def generation_stats(t0: float, gen_tokens: int, **extra) -> dict:
    """What every generation path reports: wall seconds since t0 (perf_counter), tokens, tokens/s."""
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "generated_tokens": gen_tokens,
        "tokens_per_sec": gen_tokens / max(seconds, 1e-9),
    } | extra


def make_sampling(tokenizer, prompt_len: int, temp=0.0, top_p=1.0, top_k=0, presence_penalty=0.0):
    """(sampler, logits_processors) for mlx-lm. QMD samples with temp 0.7, top-p 0.8, top-k 20; a presence
    penalty counts the last 64 generated tokens, the newline aside, as node-llama-cpp's (decode.py)."""
    from mlx_lm.sample_utils import make_sampler

    import decode
    from prompt import QMD_PENALTY_WINDOW, newline_id

    sampler = make_sampler(temp=temp, top_p=top_p if top_p < 1.0 else 0.0, top_k=top_k)
    if not presence_penalty:
        return sampler, []
    exempt = [newline_id(tokenizer)]
    return sampler, [decode.presence_processor(prompt_len, presence_penalty, QMD_PENALTY_WINDOW, exempt)]


def generate_batch(model, tokenizer, queries, max_tokens=256, batch_size=16, progress=None, **sampling):
    """Expansions for `queries`, generated `batch_size` prompts at a time with the project's batched
    decoder (decode.py, shared with GRPO rollouts). Returns (texts, stats); stats["truncated"] flags
    each text that reached max_tokens without the end token. `progress(done)` is called after every batch."""
    import decode
    from prompt import QMD_PENALTY_WINDOW, newline_id, prompt_ids

    opts = {"temp": 0.0, "top_p": 1.0, "top_k": 0, "presence_penalty": 0.0, **sampling}
    penalty = {"presence_window": QMD_PENALTY_WINDOW, "penalty_exempt": [newline_id(tokenizer)]}
    eos = set(tokenizer.eos_token_ids)
    texts, truncated, gen_tokens, t0 = [], [], 0, time.perf_counter()
    for i in range(0, len(queries), batch_size):
        chunk = [prompt_ids(tokenizer, q) for q in queries[i : i + batch_size]]
        groups = decode.generate(model, chunk, max_tokens=max_tokens, stop_ids=eos, **penalty, **opts)
        for (sample,) in groups:
            texts.append(tokenizer.decode([t for t in sample.tokens if t not in eos]))
            truncated.append(not sample.finished)
            gen_tokens += len(sample.tokens)
        if progress is not None:
            progress(len(texts))
    return texts, generation_stats(t0, gen_tokens, truncated=truncated)


def generate_sequential(model, tokenizer, queries, max_tokens=256, **sampling):
    """One query at a time with mlx_lm.generate: the baseline the batched path is measured against."""
    from mlx_lm import stream_generate

    from prompt import prompt_ids

    texts, truncated, t0 = [], [], time.perf_counter()
    gen_tokens = 0
    for q in queries:
        text, finish = "", None
        ids = prompt_ids(tokenizer, q)
        sampler, processors = make_sampling(tokenizer, len(ids), **sampling)
        for response in stream_generate(  # what mlx_lm.generate does, keeping the finish reason
            model,
            tokenizer,
            ids,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=processors,
        ):
            text += response.text
            finish = response.finish_reason
        texts.append(text)
        truncated.append(finish == "length")
        gen_tokens += len(tokenizer.encode(text))
    return texts, generation_stats(t0, gen_tokens, truncated=truncated)


# ----------------------------------------------------------------------------
# Generation through llama.cpp: a GGUF from convert.py, under QMD's run-time conditions


def load_gguf(path, n_ctx: int | None = None, seed: int = 0):
    """A llama_cpp.Llama for `path` (CPU; the context size QMD uses unless given)."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise runtime.ModelError(
            "--gguf needs llama-cpp-python: pip install llama-cpp-python (requirements-dev.txt has it)"
        ) from exc
    import convert

    try:
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx or convert.QMD_CONTEXT,
            n_threads=os.cpu_count(),  # llama-cpp-python's default is half the cores
            seed=seed,
            verbose=False,
        )
    except ValueError as exc:  # llama-cpp-python raises ValueError when llama.cpp cannot load the file
        raise runtime.ModelError(f"{path}: llama.cpp could not load this GGUF ({exc})") from exc
    if not llm.metadata.get("tokenizer.chat_template"):
        raise runtime.ModelError(f"{path}: no chat template in this GGUF; export it with convert.py")
    return llm


def generate_gguf(
    llm,
    queries,
    max_tokens=600,
    temp=0.7,
    top_p=0.8,
    top_k=20,
    presence_penalty=0.0,
    grammar=True,
    seed=0,
    progress=None,
):
    """Expansions for `queries` from llama.cpp, one query at a time as QMD asks. Returns (texts, stats).

    min_p is 0 and the repeat penalty 1 (llama-cpp-python's defaults differ) so that only QMD's
    settings shape the distribution. The presence penalty is node-llama-cpp's (decode.py): the last 64
    generated tokens, the newline exempt - llama-cpp-python's own would also count the prompt's tail
    and the newline. It runs as a logits processor, before the sampler chain, where llama.cpp's
    penalties stand."""
    from llama_cpp import LlamaGrammar, LogitsProcessorList

    import convert
    import decode
    from prompt import QMD_PENALTY_WINDOW

    texts, truncated, gen_tokens, t0 = [], [], 0, time.perf_counter()
    for i, query in enumerate(queries):
        ids = convert.gguf_prompt_ids(llm, query)
        penalty = decode.presence_processor(len(ids), presence_penalty, QMD_PENALTY_WINDOW, [llm.token_nl()])
        out = llm.create_completion(
            prompt=ids,
            max_tokens=max_tokens,
            temperature=temp,
            top_p=top_p,
            top_k=top_k,
            min_p=0.0,
            repeat_penalty=1.0,
            presence_penalty=0.0,
            logits_processor=LogitsProcessorList([penalty]) if presence_penalty else None,
            grammar=LlamaGrammar.from_string(convert.QMD_GRAMMAR, verbose=False) if grammar else None,
            seed=seed + i,
        )
        texts.append(out["choices"][0]["text"])
        truncated.append(out["choices"][0].get("finish_reason") == "length")
        gen_tokens += out["usage"]["completion_tokens"]
        if progress is not None:
            progress(len(texts))
    return texts, generation_stats(t0, gen_tokens, truncated=truncated)


def generate_qmd(path, queries, threads=None, progress=None):
    """Expansions for `queries` from QMD's own expandQuery on the GGUF at `path` (qmd_harness.expand).
    Returns (texts, records, stats): the raw completions, QMD's per-query records, timing."""
    import qmd_harness

    t0 = time.perf_counter()
    records = qmd_harness.expand(path, queries, threads=threads, on_result=progress)
    stats = generation_stats(t0, sum(r["completion_tokens"] for r in records))
    return [r["text"] or "" for r in records], records, stats


def qmd_summary(records) -> dict:
    """What QMD made of the expansions: fallbacks, lines its query-word filter dropped, cost per query."""
    import prompt

    n = max(len(records), 1)
    lines = sum(len(prompt.parse_output(r["text"] or "").lines) for r in records)
    kept = sum(0 if r["fallback"] else len(r["queryables"]) for r in records)
    return {
        "fallback_rate": round(sum(1 for r in records if r["fallback"]) / n, 4),
        "errors": sum(1 for r in records if r["error"]),
        "dropped_line_rate": round(1 - kept / lines, 4) if lines else 0.0,
        "stopped_at_max_tokens": sum(1 for r in records if r["stop_reason"] == "maxTokens"),
        "tokens_per_query": round(sum(r["completion_tokens"] for r in records) / n, 1),
        "seconds_per_query": round(sum(r["seconds"] for r in records) / n, 3),
        "chat_wrapper": sorted({r["chat_wrapper"] for r in records if r["chat_wrapper"]}),
    }


# ----------------------------------------------------------------------------
# Scoring and reports


def score_outputs(items, truncated=None) -> dict:
    """Score [(query, category, text)] and summarise: the dict written by --output. `truncated` (one flag
    per item) marks outputs cut at max_tokens: they score as failures and are counted as such."""
    results, cats = [], defaultdict(list)
    flags = truncated if truncated is not None else [False] * len(items)
    for (query, category, text), cut in zip(items, flags, strict=True):
        s = reward.score(query, text, truncated=bool(cut))
        d = s.to_dict()
        d.update(category=category, text=text, truncated=bool(cut))
        results.append(d)
        cats[category].append(s.reward)
    n = max(len(results), 1)
    kept = sum(r["qmd_kept"] for r in results)
    total_lines = sum(r["qmd_total"] for r in results)
    summary = {
        "queries": len(results),
        "average": round(sum(r["score"] for r in results) / n, 4),
        "excellent": sum(1 for r in results if r["rating"] == "Excellent"),
        "format_valid_rate": round(sum(1 for r in results if r["format_valid"]) / n, 4),
        "qmd_survival_rate": round(kept / total_lines, 4) if total_lines else 0.0,
        "hard_failures": sum(1 for r in results if r["hard_failure"]),
        "truncated": sum(1 for r in results if r["truncated"]),
        "issues": dict(reward.issue_counts(r["issues"] for r in results).most_common()),
        "per_category": {c: round(sum(v) / len(v), 4) for c, v in cats.items()},
    }
    return {"summary": summary, "results": results}


def evaluate(model, tokenizer, queries, max_tokens=256, batch_size=16, progress=None, **sampling) -> dict:
    """Generate for [(query, category)] and score: {"summary", "results", "generation"}."""
    texts, gen_stats = generate_batch(
        model, tokenizer, [q for q, _ in queries], max_tokens, batch_size, progress, **sampling
    )
    cut = gen_stats.pop("truncated")
    out = score_outputs([(q, c, t) for (q, c), t in zip(queries, texts)], truncated=cut)
    out["generation"] = {k: round(v, 3) for k, v in gen_stats.items()}
    return out


def _first_deduction(r) -> str:
    if r["hard_failure"]:
        return "HARD: " + r["hard_failure"]
    if not r["deductions"]:
        return ""
    d = max(r["deductions"], key=lambda x: x["points"])
    return f"-{d['points']:g} {d['reason']}"


def format_report(result: dict, verbose: bool = False, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'query':44} {'score':>6}  {'rating':10} first deduction")
    for r in result["results"]:
        q = r["query"] if len(r["query"]) <= 44 else r["query"][:41] + "..."
        lines.append(f"{q:44} {r['percentage']:5.1f}%  {r['rating']:10} {_first_deduction(r)}")
        if verbose:
            lines += ["    " + ln for ln in (r.get("text") or "").splitlines() or ["(empty output)"]]
            lines += [f"    -{d['points']:g} {d['dimension']}: {d['reason']}" for d in r["deductions"]]
            if r["hard_failure"]:
                lines.append(f"    HARD FAILURE: {r['hard_failure']}")
    s = result["summary"]
    lines.append("\nper category:")
    lines += [f"  {c:28} {100 * v:5.1f}%" for c, v in sorted(s["per_category"].items())]
    lines.append(
        f"\naverage {100 * s['average']:.1f}%  |  excellent {s['excellent']}/{s['queries']}  |  "
        f"format-valid {100 * s['format_valid_rate']:.1f}%  |  QMD keeps {100 * s['qmd_survival_rate']:.1f}% of lex/vec lines"
    )
    lines.append(f"breakage (outputs with each kind): {reward.format_issues(_issues(result))}")
    if "generation" in result:
        g = result["generation"]
        lines.append(
            f"generated {g['generated_tokens']} tokens in {g['seconds']:.1f}s ({g['tokens_per_sec']:.1f} tok/s)"
        )
    if "qmd" in result:
        q = result["qmd"]
        lines.append(
            f"in QMD: fell back on {100 * q['fallback_rate']:.1f}% of queries ({q['errors']} errors)  |  "
            f"its filter dropped {100 * q['dropped_line_rate']:.1f}% of lines  |  {q['tokens_per_query']:.0f} tokens, "
            f"{q['seconds_per_query']:.2f}s per query  |  {q['stopped_at_max_tokens']} hit 600 tokens"
        )
    if "environment" in result:
        env = result["environment"]
        jit = f", kernels {env['cpu_jit']}" if env.get("cpu_jit") else ""  # reports from before cpujit.py lack it
        lines.append(f"ran on {env['device']}, {env['cpu']}, mlx {env['mlx']}, BLAS {env['blas']}{jit}")
    return "\n".join(lines)


def format_compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Two runs side by side with per-query deltas (queries matched by text)."""
    by_q = {r["query"]: r for r in a["results"]}
    lines = [f"{'query':44} {name_a[:8]:>8} {name_b[:8]:>8} {'delta':>7}"]
    for r in b["results"]:
        ra = by_q.get(r["query"])
        if ra is None:
            continue
        delta = r["percentage"] - ra["percentage"]
        q = r["query"] if len(r["query"]) <= 44 else r["query"][:41] + "..."
        lines.append(f"{q:44} {ra['percentage']:7.1f}% {r['percentage']:7.1f}% {delta:+6.1f}")
    sa, sb = a["summary"], b["summary"]
    for key, label in (
        ("average", "average"),
        ("format_valid_rate", "format-valid"),
        ("qmd_survival_rate", "QMD keeps"),
    ):
        lines.append(f"{label:44} {100 * sa[key]:7.1f}% {100 * sb[key]:7.1f}% {100 * (sb[key] - sa[key]):+6.1f}")
    lines.append(f"{'excellent':44} {sa['excellent']:8} {sb['excellent']:8} {sb['excellent'] - sa['excellent']:+7}")
    ia, ib = _issues(a), _issues(b)
    lines.append("breakage (outputs with each kind):")
    for kind in sorted(set(ia) | set(ib), key=lambda k: (-(ia.get(k, 0) + ib.get(k, 0)), k)):
        na, nb = ia.get(kind, 0), ib.get(kind, 0)
        lines.append(f"  {kind:42} {na:8} {nb:8} {nb - na:+7}")
    if not ia and not ib:
        lines.append("  none")
    return "\n".join(lines)


def _issues(result: dict) -> dict:
    """Breakage kind -> outputs showing it. Runs written before reward.py knew breakage have no "issues":
    their texts are rescored with the current rubric."""
    if "issues" in result.get("summary", {}):
        return result["summary"]["issues"]
    return dict(
        reward.issue_counts(
            reward.score(r["query"], r.get("text") or "", truncated=r.get("truncated", False)).issues
            for r in result["results"]
        )
    )


def load_score_file(path) -> list:
    """[(query, category, text, truncated)] from a JSONL of {"query", "text"|"output"[, "category", "truncated"]}."""
    records, problems = jsonl_records(path)
    items = []
    for where, rec in records:
        text = reward._record_text(rec) if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or not isinstance(rec.get("query"), str) or text is None:
            problems.append(f'{where}: needs "query" and "text" (a string) or "output" (pairs)')
            continue
        items.append((rec["query"], str(rec.get("category", "uncategorised")), text, reward.record_truncated(rec)))
    if problems:
        raise DataError(problems, f"in {path}")
    if not items:
        raise DataError([f"{path}: no records"], f"in {path}")
    return items


# ----------------------------------------------------------------------------
# CLI


def _check_fraction(value):
    """--min-score is a fraction like the report's averages (printed as percentages): 80 would always fail."""
    if value is not None and not 0.0 <= value <= 1.0:
        hint = f" (for {value:g}% write {value / 100:g})" if 1 < value <= 100 else ""
        raise click.BadParameter(f"{value:g} is not a fraction in [0, 1]{hint}; the average score is 0-1")
    return value


def read_report(path) -> dict:
    """An eval report (eval.py -o / grpo.py --eval-only -o), or a clear error saying what it is not."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError([f"{path}: not JSON ({exc})"], "with --compare") from None
    summary = report.get("summary") if isinstance(report, dict) else None
    results = report.get("results") if isinstance(report, dict) else None
    needed = ("average", "format_valid_rate", "qmd_survival_rate", "excellent")
    if not isinstance(results, list) or not isinstance(summary, dict) or any(k not in summary for k in needed):
        raise DataError(
            [f'{path}: not an eval report (needs "summary" and "results"; write one with eval.py -o FILE.json)'],
            "with --compare",
        )
    if any(not isinstance(r, dict) or "query" not in r or "percentage" not in r for r in results):
        raise DataError([f'{path}: "results" entries need "query" and "percentage"'], "with --compare")
    return report


def _note(msg: str) -> None:
    """Progress and status go to stderr: stdout is the report."""
    click.echo(msg, err=True)


def _progress(n: int, what: str, batch_size: int | None, max_tokens: int):
    """Say at once what generation is about to do, then return the progress line printer."""
    batches = f" in batches of {batch_size}" if batch_size else " one at a time"
    _note(f"{what}: generating {n} expansions{batches}, up to {max_tokens} tokens each ...")
    return runtime.Progress(n, what, _note, unit=" queries")


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.command()
@click.option(
    "--model", "model_path", help="Base model: a local MLX/HF folder, a Hub id, a .gguf file or pkg:PACKAGE/FILE.gguf."
)
@click.option("--adapter", "adapter_path", type=click.Path(), help="LoRA adapter folder from train.py/grpo.py.")
@click.option(
    "--queries",
    "queries_path",
    default=str(EVAL_QUERIES),
    show_default=True,
    type=click.Path(),
    help="Query file: one per line, '# category: NAME' headers, '#' comments.",
)
@click.option("--baseline", is_flag=True, help="Also evaluate the untuned model (no adapter) and print the gain.")
@click.option("--max-tokens", default=256, show_default=True, help="Cap on generated tokens per query.")
@click.option("--batch-size", default=16, show_default=True, help="Prompts generated together.")
@click.option("--temp", default=0.0, show_default=True, help="Sampling temperature (0 = greedy). QMD uses 0.7.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling (1 = off). QMD uses 0.8.")
@click.option("--top-k", default=0, show_default=True, help="Top-k sampling (0 = off). QMD uses 20.")
@click.option(
    "--presence-penalty",
    default=0.0,
    show_default=True,
    help="Penalty on tokens generated in the last 64. QMD asks for 0.5, which node-llama-cpp never applies.",
)
@click.option("--seed", default=0, show_default=True, help="Random seed for sampling.")
@click.option("--sequential", is_flag=True, help="Generate one query at a time with mlx_lm.generate (for benchmarks).")
@click.option("-v", "--verbose", is_flag=True, help="Show every output and every deduction.")
@click.option("--output", "-o", "output_path", type=click.Path(), help="Write scores and outputs as JSON.")
@click.option(
    "--min-score",
    type=float,
    callback=lambda ctx, param, v: _check_fraction(v),
    help="Exit 1 if the average score is below this fraction (0-1; 0.8 = 80%).",
)
@click.option(
    "--compare", nargs=2, type=click.Path(exists=True, dir_okay=False), help="Compare two --output JSON files."
)
@click.option(
    "--score-only",
    type=click.Path(exists=True, dir_okay=False),
    help='Score a JSONL of {"query", "text"} without a model.',
)
@click.option("--interactive", is_flag=True, help="Type queries and see expansions with their score breakdown.")
@click.option(
    "--gguf",
    "gguf_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Evaluate this GGUF (from convert.py) through llama.cpp as QMD runs it: its embedded chat template, "
    "QMD's grammar and, unless given, QMD's sampling (--temp 0.7 --top-p 0.8 --top-k 20, no presence penalty) "
    "and --max-tokens 600. Replaces --model/--adapter.",
)
@click.option(
    "--qmd",
    "qmd_gguf",
    type=click.Path(exists=True, dir_okay=False),
    help="Evaluate this GGUF inside the real QMD (make qmd): QMD's own expandQuery with its prompt, grammar, "
    "sampling, filter and fallbacks. Replaces --model/--adapter.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="With --qmd: CPU threads for QMD's llama.cpp context (default: all cores; node-llama-cpp's own "
    "default, max(4, cores), is slow on small machines).",
)
@click.option(
    "--grammar/--no-grammar",
    default=True,
    show_default=True,
    help="With --gguf: constrain output to QMD's `lex|vec|hyde: ...` lines (GBNF).",
)
def cli(
    model_path,
    adapter_path,
    queries_path,
    baseline,
    max_tokens,
    batch_size,
    temp,
    top_p,
    top_k,
    presence_penalty,
    seed,
    sequential,
    verbose,
    output_path,
    min_score,
    compare,
    score_only,
    interactive,
    gguf_path,
    qmd_gguf,
    threads,
    grammar,
):
    """Generate expansions for test queries and score them with reward.py."""
    if compare:
        try:
            a, b = (read_report(p) for p in compare)
        except DataError as err:
            _fail(str(err))
        click.echo(format_compare(a, b, Path(compare[0]).stem, Path(compare[1]).stem))
        return
    if score_only:
        try:
            items = load_score_file(score_only)
            result = score_outputs([i[:3] for i in items], truncated=[i[3] for i in items])
        except DataError as err:
            _fail(str(err))
        return _finish(result, verbose, output_path, min_score)

    if qmd_gguf:
        ctx = click.get_current_context()
        given = [
            f"--{p.replace('_', '-')}"
            for p in ("model_path", "adapter_path", "gguf_path", "temp", "top_p", "top_k", "presence_penalty")
            + ("max_tokens", "batch_size", "sequential", "baseline", "interactive", "grammar")
            if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            _fail(
                f"--qmd runs QMD's own expansion: its prompt, grammar, sampling and 600-token cap are QMD's; "
                f"drop {', '.join(given)}"
            )
        return _cli_qmd(qmd_gguf, threads, queries_path, verbose, output_path, min_score)
    if threads:
        _fail("--threads only applies to --qmd")
    if gguf_path:
        if model_path or adapter_path or baseline or sequential:
            _fail(
                "--gguf replaces --model/--adapter (the adapters are fused into the GGUF); --baseline and --sequential are MLX-only"
            )
        return _cli_gguf(gguf_path, click.get_current_context())
    if gguf_path is None and not grammar:
        _fail("--no-grammar only applies to --gguf")
    if not model_path and adapter_path:
        try:  # the adapter records the base model it was trained on
            model_path = runtime.adapter_base_model(adapter_path)
        except runtime.ModelError as err:
            _fail(str(err))
        click.echo(f"base model {model_path} (from {adapter_path}/adapter_config.json)", err=True)
    if not model_path:
        _fail("--model is required (or --adapter, whose base model is used, or --gguf / --compare / --score-only)")
    import mlx.core as mx

    mx.random.seed(seed)
    sampling = {"temp": temp, "top_p": top_p, "top_k": top_k, "presence_penalty": presence_penalty}
    _note(f"loading {model_path}" + (f" + {adapter_path}" if adapter_path else "") + " ...")
    try:
        model, tokenizer = runtime.load_model(model_path, adapter_path, fuse=True)  # inference only
    except (runtime.ModelError, OSError, ValueError) as err:
        _fail(str(err))
    if interactive:
        return _interactive(lambda q: generate_batch(model, tokenizer, [q], max_tokens, 1, **sampling)[0][0])
    try:
        queries = read_queries(queries_path)
    except DataError as err:
        _fail(str(err))

    if sequential:
        texts, stats = generate_sequential(model, tokenizer, [q for q, _ in queries], max_tokens, **sampling)
        cut = stats.pop("truncated")
        result = score_outputs([(q, c, t) for (q, c), t in zip(queries, texts)], truncated=cut)
        result["generation"] = {k: round(v, 3) for k, v in stats.items()}
    else:
        name = adapter_path or model_path
        progress = _progress(len(queries), str(name), batch_size, max_tokens)
        result = evaluate(model, tokenizer, queries, max_tokens, batch_size, progress, **sampling)
    result["config"] = {
        "model": model_path,
        "adapter": adapter_path,
        "queries": str(queries_path),
        **sampling,
        "max_tokens": max_tokens,
    }
    if baseline and adapter_path:
        base_model, base_tok = runtime.load_model(model_path)
        progress = _progress(len(queries), "untuned base model", batch_size, max_tokens)
        base = evaluate(base_model, base_tok, queries, max_tokens, batch_size, progress, **sampling)
        click.echo(format_report(base, verbose, title="== untuned base model =="))
        click.echo("")
        result["baseline"] = base
        click.echo(format_report(result, verbose, title=f"== {adapter_path} =="))
        click.echo("\n" + format_compare(base, result, "base", "tuned"))
        return _finish(result, False, output_path, min_score, echo=False)
    return _finish(result, verbose, output_path, min_score)


def _cli_gguf(path, ctx):
    """eval.py --gguf: QMD's run-time settings wherever the command line gave none (the options are
    read from the command's context, `ctx.params`)."""
    import convert

    p = ctx.params
    given = {k: ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT for k in p}
    sampling = {
        k: p[k] if given[k] else convert.QMD_SAMPLING[k] for k in ("temp", "top_p", "top_k", "presence_penalty")
    }
    max_tokens = p["max_tokens"] if given["max_tokens"] else convert.QMD_MAX_TOKENS
    grammar, queries_path, seed = p["grammar"], p["queries_path"], p["seed"]
    verbose, output_path, min_score, interactive = p["verbose"], p["output_path"], p["min_score"], p["interactive"]
    try:
        llm = load_gguf(path, seed=seed)
    except runtime.ModelError as err:
        _fail(str(err))
    settings = dict(max_tokens=max_tokens, grammar=grammar, seed=seed, **sampling)
    if interactive:
        return _interactive(lambda q: generate_gguf(llm, [q], **settings)[0][0])
    try:
        queries = read_queries(queries_path)
    except DataError as err:
        _fail(str(err))
    click.echo(
        f"llama.cpp: {Path(path).name}, {len(queries)} queries, grammar {'on' if grammar else 'off'}, {sampling}",
        err=True,
    )
    progress = _progress(len(queries), Path(path).name, None, max_tokens)
    texts, stats = generate_gguf(llm, [q for q, _ in queries], progress=progress, **settings)
    cut = stats.pop("truncated")
    result = score_outputs([(q, c, t) for (q, c), t in zip(queries, texts)], truncated=cut)
    result["generation"] = {k: round(v, 3) for k, v in stats.items()}
    result["config"] = {
        "gguf": str(path),
        "queries": str(queries_path),
        "grammar": grammar,
        **sampling,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    return _finish(result, verbose, output_path, min_score)


def _cli_qmd(path, threads, queries_path, verbose, output_path, min_score):
    """eval.py --qmd: the GGUF in the real QMD, scored like every other path."""
    import qmd_harness

    try:
        queries = read_queries(queries_path)
        qmd_harness.require()
    except DataError as err:
        _fail(str(err))
    except qmd_harness.QmdError as err:
        _fail(str(err))
    threads = threads or os.cpu_count()
    click.echo(f"QMD {qmd_harness.QMD_VERSION}: {Path(path).name}, {len(queries)} queries, {threads} threads", err=True)
    t0 = time.perf_counter()

    def progress(i, rec):
        done, elapsed = i + 1, time.perf_counter() - t0
        eta = elapsed / done * (len(queries) - done)
        click.echo(
            f"  {done}/{len(queries)}  {rec['completion_tokens']:4d} tokens  {rec['seconds']:5.1f}s  "
            f"{'fallback ' if rec['fallback'] else ''}{rec['query'][:40]}  (ETA {eta:.0f}s)",
            err=True,
        )

    try:
        texts, records, stats = generate_qmd(path, [q for q, _ in queries], threads, progress)
    except qmd_harness.QmdError as err:
        _fail(str(err))
    result = score_outputs([(q, c, t) for (q, c), t in zip(queries, texts)])
    for r, rec in zip(result["results"], records):
        r["qmd"] = {
            k: rec[k] for k in ("queryables", "fallback", "error", "completion_tokens", "stop_reason", "seconds")
        }
    result["qmd"] = qmd_summary(records)
    result["generation"] = {k: round(v, 3) for k, v in stats.items()}
    result["config"] = {
        "qmd": qmd_harness.QMD_VERSION,
        "gguf": str(path),
        "queries": str(queries_path),
        "threads": threads,
    }
    return _finish(result, verbose, output_path, min_score)


def _finish(result, verbose, output_path, min_score, echo=True):
    result.setdefault("environment", runtime.environment())
    if echo:
        click.echo(format_report(result, verbose))
    if output_path:
        runtime.atomic_write_json(output_path, result)
        click.echo(f"wrote {output_path}")
    if min_score is not None and result["summary"]["average"] < min_score:
        click.echo(f"average {result['summary']['average']:.3f} is below --min-score {min_score}", err=True)
        sys.exit(1)


def _interactive(generate_one):
    """Read queries until EOF; `generate_one(query) -> text` is the MLX or the llama.cpp generator."""
    click.echo("Type a search query (Ctrl-D or Ctrl-C to quit).")
    while True:
        try:
            query = input("query> ").strip()
        except (EOFError, KeyboardInterrupt):
            click.echo("")
            return
        if not query:
            continue
        text = generate_one(query)
        s = reward.score(query, text)
        click.echo(text if text.strip() else "(empty output)")
        click.echo(f"-- {s.percentage:.1f}% {s.rating}  " + "  ".join(f"{k} {v:g}" for k, v in s.dimensions.items()))
        click.echo(reward.explain(s))


if __name__ == "__main__":
    cli()
