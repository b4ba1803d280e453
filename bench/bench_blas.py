"""Which BLAS should MLX's float32 matmuls run on? Every candidate on this machine, in one run.

    python bench/bench_blas.py [--model demo|tiny|PATH] [--repeats 3] [--quick]

Each candidate is a child process that differs from the others only in its environment:
  * project      - what every script of the project does (blas.plan: Debian's OpenBLAS, with the kernel
                   chosen from the CPU flags by probing when OpenBLAS's own pick is weaker). An
                   OPENBLAS_CORETYPE inherited from this environment is removed, so the choice is ours.
  * environment  - Debian's OpenBLAS with this environment's OPENBLAS_CORETYPE (only if one is set).
  * 1 thread     - project, with OPENBLAS_NUM_THREADS=1 (OpenBLAS's threads spin while MLX's own
                   threads work, which shows as system CPU time on 2 cores).
  * openblas-new - OpenBLAS 0.3.34 from PyPI (`scipy-openblas32`, 7.9 MB) - its symbols are prefixed
                   (scipy_cblas_sgemm), so a 20-line shim compiled here forwards MLX's cblas_*gemm.
  * mkl          - Intel MKL from PyPI (`mkl`, 229 MB wheel, 685 MB installed), MKL_THREADING_LAYER=GNU.
  * bundled      - QMD_FAST_BLAS=0: mlx[cpu]'s reference BLAS (the baseline of the >= 10x target).
The PyPI libraries are installed into .venv-bench (make bench), never into the project's .venv.
Each child reports the library, version and kernel it loaded (asked of the library), then measures:
float32 n x n matmul GFLOP/s; one LoRA SFT step as train.py takes it (demo config's LoRA, a length
bucket of 4 real examples, completion_loss, AdamW); one batched decode step (16 rows, decode.py, QMD's
sampling) and the whole child's user and system CPU seconds (resource.getrusage).
Targets: project >= 10x bundled (matmul and SFT step); project within 10% of the best candidate on the
SFT step (else the best one should become the default).
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import click
import common

SHIM = r"""
/* Forwards the CBLAS gemm entry points MLX calls to scipy-openblas's prefixed ones. */
typedef int blasint;
#define FWD(T, name, S) \
  extern void scipy_cblas_##name(int, int, int, blasint, blasint, blasint, S, const T *, blasint, const T *, \
                                 blasint, S, T *, blasint); \
  void cblas_##name(int o, int ta, int tb, blasint m, blasint n, blasint k, S al, const T *a, blasint lda, \
                    const T *b, blasint ldb, S be, T *c, blasint ldc) { \
    scipy_cblas_##name(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc); }
FWD(float, sgemm, float)
FWD(double, dgemm, double)
FWD(void, cgemm, const void *)
extern char *scipy_openblas_get_config(void);
extern char *scipy_openblas_get_corename(void);
char *openblas_get_config(void) { return scipy_openblas_get_config(); }
char *openblas_get_corename(void) { return scipy_openblas_get_corename(); }
"""


# ----------------------------------------------------------------------------
# The child: one candidate's measurements


def child(model: str, size: int, repeats: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    import blas
    import decode
    import train
    from prompt import prompt_ids

    gflops = common.runtime.matmul_gflops(size, repeats=5)
    cfg = {
        **train.SFT_DEFAULTS,
        "model": model,
        "num_layers": 16,
        "rank": 16,
        "alpha": 32,
        "dropout": 0.0,
        "max_seq_length": 128,
    }
    mx.random.seed(common.SEED)
    m, tok, _, _ = train.build_lora_model(cfg)
    items, _ = train.tokenize(common.pick_examples(64), tok, cfg["max_seq_length"])
    batch = next(train.make_iterate_batches(common.SEED)(items, 4, cfg["max_seq_length"], loop=True))
    optimizer = train.make_optimizer(cfg)
    loss_and_grad = nn.value_and_grad(m, train.completion_loss)
    m.train()

    def sft_step():
        (loss, _), grads = loss_and_grad(m, *batch)
        optimizer.update(m, grads)
        mx.eval(loss, m.trainable_parameters(), optimizer.state)

    step_s = common.median_time(sft_step, repeats=repeats, warmup=1)
    m.eval()
    prompts = [prompt_ids(tok, ex.query) for ex in common.pick_examples(16, seed=1)]
    sampling = {"temp": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 0.5}  # the penalty's cost included

    def decode_steps(n):  # n decode steps of 16 rows (rows never stop: no stop ids)
        decode.generate(m, prompts, max_tokens=n, **sampling)

    decode_steps(2)  # warm-up
    t = time.perf_counter()
    decode_steps(2)
    short = time.perf_counter() - t
    t = time.perf_counter()
    decode_steps(18)
    long = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "blas": blas.summary(),
        "gflops": gflops,
        "sft_step_s": step_s,
        "decode_step_s": (long - short) / 16,  # prefill cancels out
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "shape": list(batch[0].shape),
    }


# ----------------------------------------------------------------------------
# The candidates


def bench_site_packages() -> Path | None:
    py = common.BENCH_VENV_PYTHON
    if not py.exists():
        return None
    out = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    )
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def build_shim(lib_dir: Path) -> Path | None:
    out = Path("/tmp/qmd-bench-blas-shim/libqmdblas.so")
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".c")
    src.write_text(SHIM)
    cmd = ["gcc", "-O2", "-shared", "-fPIC", str(src), "-o", str(out), f"-L{lib_dir}", "-lscipy_openblas"]
    cmd.append(f"-Wl,-rpath,{lib_dir}")
    return out if subprocess.run(cmd, capture_output=True).returncode == 0 else None


def candidates() -> dict:
    """name -> environment changes (None removes a variable)."""
    base = {"OPENBLAS_CORETYPE": None, "OPENBLAS_NUM_THREADS": None, "QMD_BLAS": None, "QMD_BLAS_REASON": None}
    base["LD_PRELOAD"] = None
    out = {"project": dict(base)}
    env_kernel = os.environ.get("OPENBLAS_CORETYPE")
    if env_kernel:
        out[f"environment ({env_kernel})"] = {**base, "OPENBLAS_CORETYPE": env_kernel}
    out["project, 1 thread"] = {**base, "OPENBLAS_NUM_THREADS": "1"}
    site = bench_site_packages()
    if site is not None:
        lib_dir = site / "scipy_openblas32" / "lib"
        shim = build_shim(lib_dir) if (lib_dir / "libscipy_openblas.so").exists() else None
        if shim:
            out["openblas 0.3.34 (PyPI)"] = {**base, "QMD_BLAS": str(shim)}
        mkl = next(iter(sorted(site.parent.parent.parent.glob("lib/libmkl_rt.so*"))), None)
        if mkl is not None:
            out["mkl (PyPI)"] = {**base, "QMD_BLAS": str(mkl), "MKL_THREADING_LAYER": "GNU"}
    out["bundled"] = {**base, "QMD_FAST_BLAS": "0"}
    return out


@click.command()
@click.option("--model", default="demo", show_default=True, help="demo (SmolLM2-135M), tiny (random Qwen3) or a path.")
@click.option("--size", default=1024, show_default=True, help="Matrix size n for the n x n float32 matmul.")
@click.option("--repeats", default=3, show_default=True, help="Timed SFT steps (median) after one warm-up step.")
@click.option("--quick", is_flag=True, help="Smoke run: 512 matmul, 1 timed step.")
@click.option("--child", "as_child", is_flag=True, hidden=True)
def main(model, size, repeats, quick, as_child):
    if quick:
        size, repeats = 512, 1
    path = common.model_path(model)
    if as_child:
        print("RESULT " + json.dumps(child(path, size, repeats)))
        return
    if not sys.platform.startswith("linux") or common.runtime.find_openblas() is None:
        common.record(
            "blas", "-", "-", None, ">=10x", status="BLOCKED: Linux with libopenblas0-pthread only", save=not quick
        )
        return
    results = {}
    for name, changes in candidates().items():
        env = dict(os.environ)
        for k, v in changes.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        cmd = [sys.executable, __file__, "--child", "--model", path, "--size", size, "--repeats", repeats]
        t = time.perf_counter()
        _, out = common.run(cmd, env=env)
        results[name] = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
        r = results[name]
        print(
            f"{name:26} {r['gflops']:6.1f} GFLOP/s | SFT step {r['sft_step_s']:6.2f}s | decode step "
            f"{1000 * r['decode_step_s']:6.0f} ms | CPU user {r['user_s']:5.1f}s sys {r['sys_s']:5.1f}s | "
            f"{time.perf_counter() - t:.0f}s | {r['blas']}",
            flush=True,
        )
    ours, base = results["project"], results["bundled"]
    if not ours["blas"].startswith("OpenBLAS") or not base["blas"].startswith("bundled"):
        raise SystemExit(f"the children did not load the expected BLAS: {ours['blas']!r} / {base['blas']!r}")
    kernel = ours["blas"].split(" (")[0]
    common.record(
        f"blas: float32 {size}x{size} matmul, project ({kernel}) vs bundled",
        f"{ours['gflops']:.1f} GFLOP/s",
        f"{base['gflops']:.1f} GFLOP/s",
        ours["gflops"] / base["gflops"],
        ">=10x",
        f"project: {ours['blas']}",
        save=not quick,
    )
    common.record(
        f"blas: one LoRA SFT step ({model}, batch {'x'.join(map(str, ours['shape']))} tokens), project vs bundled",
        f"{ours['sft_step_s']:.2f}s",
        f"{base['sft_step_s']:.2f}s",
        base["sft_step_s"] / ours["sft_step_s"],
        ">=10x",
        f"median of {repeats} timed step(s) after a warm-up step",
        save=not quick,
    )
    for name, r in results.items():
        if name in ("project", "bundled"):
            continue
        common.record(
            f"blas candidate: {name} vs project ({model}; SFT step, decode step of 16 rows, sys CPU)",
            f"{ours['sft_step_s']:.2f}s, {1000 * ours['decode_step_s']:.0f} ms, sys {ours['sys_s']:.1f}s, {ours['gflops']:.0f} GFLOP/s",
            f"{r['sft_step_s']:.2f}s, {1000 * r['decode_step_s']:.0f} ms, sys {r['sys_s']:.1f}s, {r['gflops']:.0f} GFLOP/s",
            r["sft_step_s"] / ours["sft_step_s"],
            ">=0.9x",
            f"ratio = candidate SFT step time / project's; {r['blas']}",
            save=not quick,
        )


if __name__ == "__main__":
    main()
