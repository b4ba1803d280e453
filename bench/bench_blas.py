"""The project's BLAS set-up (OpenBLAS preloaded by runtime.ensure_fast_blas) vs mlx[cpu]'s bundled BLAS.

    python bench/bench_blas.py [--model tiny|demo|PATH] [--size 1024] [--repeats 3] [--quick]

Two child processes run the same measurements; the only difference is the environment: one as every
script of the project starts (OpenBLAS in LD_PRELOAD), one with QMD_FAST_BLAS=0 (MLX's bundled
reference BLAS). Each reports the BLAS it actually loaded, then:
  * float32 matmul GFLOP/s (n x n, runtime.matmul_gflops: median of 5 after a warm-up);
  * one LoRA SFT step as train.py takes it (train.build_lora_model with the demo config's LoRA
    settings, a length bucket of 4 real examples from train.py's own batch iterator, train.py's
    completion_loss, value_and_grad + AdamW update): median of --repeats after a warm-up step.
On macOS and GPUs this benchmark does not apply (no BLAS preload there). Target: >= 10x.
"""

import json
import sys
import time

import click
import common


def child(model: str, size: int, repeats: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    import train

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

    def step():
        (loss, _), grads = loss_and_grad(m, *batch)
        optimizer.update(m, grads)
        mx.eval(loss, m.trainable_parameters(), optimizer.state)

    seconds = common.median_time(step, repeats=repeats, warmup=1)
    return {"blas": common.runtime.blas_in_use(), "gflops": gflops, "step_s": seconds, "shape": list(batch[0].shape)}


@click.command()
@click.option("--model", default="tiny", show_default=True, help="tiny (random Qwen3), demo (SmolLM2-135M) or a path.")
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
    for name, fast in (("project", True), ("bundled", False)):
        cmd = [sys.executable, __file__, "--child", "--model", path, "--size", size, "--repeats", repeats]
        t = time.perf_counter()
        _, out = common.run(cmd, env=common.blas_env(fast=fast))
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        results[name] = json.loads(line[len("RESULT ") :])
        print(f"{name}: {results[name]} ({time.perf_counter() - t:.0f}s)")
    ours, base = results["project"], results["bundled"]
    if not ours["blas"].startswith("OpenBLAS") or not base["blas"].startswith("bundled"):
        raise SystemExit(f"the children did not load the expected BLAS: {ours['blas']!r} / {base['blas']!r}")
    common.record(
        f"blas: float32 {size}x{size} matmul, OpenBLAS preload vs bundled",
        f"{ours['gflops']:.1f} GFLOP/s",
        f"{base['gflops']:.1f} GFLOP/s",
        ours["gflops"] / base["gflops"],
        ">=10x",
        "QMD_FAST_BLAS=0 child vs default child",
        save=not quick,
    )
    common.record(
        f"blas: one LoRA SFT step ({model}, batch {'x'.join(map(str, ours['shape']))} tokens, float32)",
        f"{ours['step_s']:.2f}s",
        f"{base['step_s']:.2f}s",
        base["step_s"] / ours["step_s"],
        ">=10x",
        f"median of {repeats} timed step(s) after a warm-up step",
        save=not quick,
    )


if __name__ == "__main__":
    main()
