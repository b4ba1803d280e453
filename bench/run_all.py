"""Run every benchmark, one after another, each in its own process; `make bench` calls this.

    python bench/run_all.py                  # the full set (both models): ~20 min on 2 idle cores (estimate)
    python bench/run_all.py --quick          # smoke run: every script with --quick on the tiny model
    python bench/run_all.py --models demo    # only the runs on one model (reward/blas always run)

Each script appends its rows to bench/results.md. Sizes are chosen so that the whole set fits in
about 20 minutes on a 2-core CPU (it took 31 minutes with three other jobs sharing the 2 cores): the
demo model (SmolLM2-135M) gets smaller runs than the tiny one, and the slowest baseline (one query
at a time on the demo model) one timed pass instead of two. A script that fails is reported and the
rest still run; the exit status is non-zero if any failed. Run it on an otherwise idle machine:
every figure is a wall-clock time.
"""

import resource
import subprocess
import sys
import time
from pathlib import Path

import click

HERE = Path(__file__).resolve().parent

# (script, model or None, arguments): model-specific sizes keep the whole set under 20 minutes
PLAN = [
    ("bench_reward.py", None, []),
    ("bench_retrieval_reward.py", None, []),
    ("bench_blas.py", None, ["--model", "demo", "--repeats", "1"]),
    ("bench_rollout.py", "tiny", []),
    ("bench_rollout.py", "demo", ["--max-tokens", "32", "--repeats", "2"]),
    ("bench_eval.py", "tiny", []),
    ("bench_eval.py", "demo", ["--max-tokens", "32", "--sequential-repeats", "1"]),
    ("bench_sft.py", "tiny", []),
    ("bench_sft.py", "demo", ["--examples", "16"]),
    ("bench_grpo.py", "tiny", []),
    ("bench_grpo.py", "demo", ["--batch-size", "2", "--max-tokens", "32", "--steps", "3"]),
    ("bench_distributed.py", "tiny", []),  # 2 ranks vs 1 (mlx.launch over loopback), all-reduce times
    # needs the demo adapter (make demo); records BLOCKED without it
    ("bench_generation.py", "demo", []),
]


@click.command()
@click.option("--quick", is_flag=True, help="Every script with --quick, tiny model only: a smoke test.")
@click.option("--models", default="tiny,demo", show_default=True, help="Comma-separated models to run.")
def main(quick, models):
    wanted = set(models.split(","))
    plan = []
    for script, model, args in PLAN:
        if quick:
            if model in (None, "tiny"):
                plan.append((script, ["--quick"] + (["--model", "tiny"] if script == "bench_blas.py" else [])))
            continue
        if model is None or model in wanted:
            model_args = ["--model", model] if model and script != "bench_generation.py" else []
            plan.append((script, model_args + args))
    failed, t_all = [], time.perf_counter()
    for script, args in plan:
        cmd = [sys.executable, str(HERE / script), *args]
        print(f"\n== {' '.join([script, *args])}", flush=True)
        t, cpu = time.perf_counter(), _children_cpu()
        rc = subprocess.run(cmd).returncode
        wall, cpu = time.perf_counter() - t, _children_cpu() - cpu
        # CPU seconds next to wall seconds: a CPU/wall ratio far below the core count means other load
        status = "ok" if rc == 0 else f"FAILED ({rc})"
        print(f"== {script}: {status} in {wall:.0f}s (CPU {cpu:.0f}s)", flush=True)
        if rc != 0:
            failed.append(" ".join([script, *args]))
    minutes = (time.perf_counter() - t_all) / 60
    where = "smoke run, nothing written" if quick else f"results appended to {HERE / 'results.md'}"
    print(f"\nall benchmarks: {minutes:.1f} min; {where}")
    if failed:
        print("failed:\n  " + "\n  ".join(failed))
        sys.exit(1)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
