"""Data-parallel SFT on one machine: 2 ranks (mlx.launch, ring backend over loopback) vs 1 process.

    python bench/bench_distributed.py [--model tiny|demo|PATH] [--iters 12] [--quick]

Two rows:
  * SFT step time: `train.py sft` with the same global batch (4 examples, no accumulation), data,
    seed and LoRA settings, as one process and as 2 ranks of `mlx.launch --backend ring` on this
    machine. Step time is the median difference of consecutive `elapsed_s` in rank 0's
    metrics.jsonl (one record per step), steps 1-2 excluded (graph compilation), so model loading
    and tokenizing are not counted. Ratio = one process's step time / 2 ranks' (a speed-up). On a
    2-core machine the two ranks share the cores, each half-batch uses them less well, and the
    all-reduce comes on top: the ratio is expected below 1. The run is here to show the cost
    honestly; the point of 2 ranks on one box is the correctness tests (tests/test_distributed.py).
  * All-reduce time per optimizer step: mlx.nn.average_gradients (what mlx-lm's trainer calls for
    SFT) on a gradient tree of the shape of the LoRA in configs/sft.yaml on Qwen3-1.7B (rank 16 on
    q/k/v/o/gate/up/down of 28 blocks, float32), and distributed.World.sum_tree (grpo.py) on the
    configs/grpo.yaml LoRA (rank 4 on q/v), 2 ranks over loopback; median of 5 after 2 warm-ups.
    Loopback is memory bandwidth, not a network: between two Macs it is bounded by the link.
"""

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import common

# Qwen3-1.7B: hidden 2048, 16 query heads and 8 KV heads of 128, MLP 6144, 28 blocks.
QWEN3_17B = {"hidden": 2048, "q": 2048, "kv": 1024, "mlp": 6144, "blocks": 28}


def lora_shapes(dims: dict, rank: int, keys: list) -> dict:
    """{name: (in, out)} of every LoRA pair (lora_a: in x rank, lora_b: rank x out) of the preset."""
    h, q, kv, m = dims["hidden"], dims["q"], dims["kv"], dims["mlp"]
    io = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
          "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}  # fmt: skip
    return {f"layers.{b}.{k}": io[k] for b in range(dims["blocks"]) for k in keys}


def gradient_tree(shapes: dict, rank: int):
    import mlx.core as mx

    return {
        name: {"lora_a": mx.ones((i, rank)) * 1e-3, "lora_b": mx.ones((rank, o)) * 1e-3}
        for name, (i, o) in shapes.items()
    }


def worker_allreduce():
    """Under mlx.launch: time the two all-reduces; rank 0 prints one JSON line."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    import distributed

    world = distributed.World()
    sft = gradient_tree(lora_shapes(QWEN3_17B, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), 16)  # fmt: skip
    grpo = gradient_tree(lora_shapes(QWEN3_17B, 4, ["q_proj", "v_proj"]), 4)
    mx.eval(sft, grpo)
    result = {"ranks": world.size}
    for name, tree, fn in [
        ("sft", sft, lambda t: nn.average_gradients(t, group=world.group)),
        ("grpo", grpo, world.sum_tree),
    ]:
        times = []
        for i in range(7):
            world.any_rank(False)  # start together
            t = time.perf_counter()
            out = fn(tree)
            mx.eval(out)
            if i >= 2:
                times.append(time.perf_counter() - t)
        nbytes = sum(v.nbytes for _, v in tree_flatten(tree))
        result[name] = {"bytes": nbytes, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    if world.lead:
        print("RESULT " + json.dumps(result), flush=True)


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def launch_cmd(tmp: Path, argv: list) -> list:
    hosts = tmp / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    launcher = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
    return [launcher, "--hostfile", hosts, "--backend", "ring", "-p", free_port(), "--python", sys.executable, *argv]


def run_launched(cmd, stdin_eof=False) -> tuple:
    """common.run for mlx.launch, with a stdin that stays open and silent. mlx.launch (mlx 0.32.4)
    forwards stdin to the ranks by select()ing on it every 0.1 s: at EOF (/dev/null, a closed pipe,
    a background job) select returns at once, and the launcher spins a whole core, half of this
    machine. stdin_eof=True gives it /dev/null, to show what that costs."""
    import subprocess

    cmd = [str(c) for c in cmd]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=common.ROOT, env=common.blas_env(),
                            stdin=subprocess.DEVNULL if stdin_eof else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = proc.stdout.read()  # stdin stays open (nothing written) until the ranks are done
    proc.wait()
    if proc.stdin:
        proc.stdin.close()
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return time.perf_counter() - t, out


def step_time(out: Path) -> tuple:
    """(median seconds per step from step 3 on, steps timed) from a run's metrics.jsonl."""
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    el = [(r["step"], r["elapsed_s"]) for r in recs if "train_loss" in r]
    deltas = [b[1] - a[1] for a, b in zip(el, el[1:]) if a[0] >= 2]
    return statistics.median(deltas), len(deltas)


@click.command()
@click.option("--model", default="tiny", show_default=True, help="tiny | demo | a model path.")
@click.option("--iters", default=12, show_default=True, help="SFT steps per run (the first 2 are not timed).")
@click.option("--quick", is_flag=True, help="Smoke run: 6 steps, no row written.")
@click.option("--worker", type=click.Choice(["allreduce"]), hidden=True)
def main(model, iters, quick, worker):
    if worker:
        return worker_allreduce()
    import data

    iters = 6 if quick else iters
    path = common.model_path(model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        data.write_jsonl(tmp / "data" / "train.jsonl", common.pick_examples(64))
        never = str(10**6)
        args = ["train.py", "sft", "--model", path, "--data", tmp / "data", "--iters", iters, "--batch-size", "4",
                "--grad-accumulation-steps", "1", "--steps-per-report", "1", "--steps-per-eval", never,
                "--save-every", never, "--max-seq-length", "256", "--rank", "16", "--alpha", "32",
                "--num-layers", "-1", "--seed", common.SEED]  # fmt: skip
        wall1, _ = common.run([sys.executable, *args, "--adapter-path", tmp / "one"])
        one, n1 = step_time(tmp / "one")
        wall2, out2 = run_launched(launch_cmd(tmp, [*args, "--adapter-path", tmp / "two"]))
        two, n2 = step_time(tmp / "two")
        assert "distributed: 2 ranks" in out2, out2[-2000:]
        wall3, _ = run_launched(launch_cmd(tmp, [*args, "--adapter-path", tmp / "eof"]), stdin_eof=True)
        eof, _ = step_time(tmp / "eof")
        _, out = run_launched(launch_cmd(tmp, ["bench/bench_distributed.py", "--worker", "allreduce"]))
    ar = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    name = "tiny" if model == "tiny" else Path(path).name
    common.record(
        f"distributed: SFT step, 2 ranks (ring, loopback) vs 1 process ({name}, global batch 4)",
        f"{two:.3f}s/step (wall {wall2:.0f}s)",
        f"{one:.3f}s/step (wall {wall1:.0f}s)",
        one / two,
        "n/a (2 cores shared)",
        f"median of {min(n1, n2)} steps after 2 warm-up steps, rank 0's metrics.jsonl; same global batch, data and "
        f"seed; with mlx.launch's stdin at EOF (/dev/null) its input loop spins a core: {eof:.3f}s/step (wall {wall3:.0f}s)",
        status="info",
        save=not quick,
    )
    s, g = ar["sft"], ar["grpo"]
    common.record(
        "distributed: all-reduce per optimizer step, 2 ranks over loopback (ring), Qwen3-1.7B presets",
        f"SFT LoRA {s['bytes'] / 1e6:.1f} MB: {1000 * s['median_s']:.0f} ms; GRPO LoRA {g['bytes'] / 1e6:.1f} MB: "
        f"{1000 * g['median_s']:.1f} ms",
        "-",
        None,
        "n/a",
        f"median of 5 after 2 warm-ups (SFT range {1000 * s['min_s']:.0f}-{1000 * s['max_s']:.0f} ms); "
        "mlx.nn.average_gradients for SFT, distributed.World.sum_tree for GRPO; loopback, not a network",
        status="info",
        save=not quick,
    )


if __name__ == "__main__":
    main()
