"""SFT throughput: `train.py sft` vs the plain mlx-lm CLI (`python -m mlx_lm lora --train`).

    python bench/bench_sft.py [--model tiny|demo|PATH] [--examples 32] [--epochs 3] [--quick]

Same model (the baseline gets a float32 copy, as ours computes in float32 on CPU), same examples,
same LoRA settings (rank 16, alpha 32 = scale 2, all seven projections, last 16 blocks), batch size,
optimizer (AdamW, weight decay 0, constant learning rate), seed, max length, OpenBLAS preloaded for
both, no validation, no intermediate checkpoints.

Fairness: both tools train on the same N examples (N a multiple of the batch size) for whole epochs,
so every epoch both see exactly the same examples, the same tokens, in their own batch order. Both
run mlx-lm's `train()` loop, whose own timer covers the training steps only (not model loading,
tokenization, batch building or saving); it reports once per epoch here (steps_per_report = N / B).
The epoch time is recovered from each tool's own report: loss tokens in the interval / reported
loss tokens per second (ours from its metrics.jsonl, mlx-lm's from its console lines, its loss-token
count recomputed exactly with its own ChatDataset). Epoch 1 (graph compilation) is the warm-up and
is excluded; the result is the median over the remaining epochs. Throughput is reported as the
examples' real (unpadded) tokens per second, identical work for both, so the ratio is the ratio of
epoch times. Whole-process wall times (model load included) are shown for information.

What differs is ours: (1) batching - mlx-lm's length sort is a no-op for chat records (it sorts by
the number of keys), so its batches mix lengths and pad to a multiple of 32, while ours are length
buckets padded to a multiple of 16; (2) the loss - train.py's completion_loss sends only the target
positions through the output layer and log-softmax, mlx-lm's default_loss every position. Prompts
are the same text in both (prompt.messages); mlx-lm's sequences carry one more token (the newline
after <|im_end|>) and, for Qwen3, its --mask-prompt also trains the empty think block.
Target: ours >= 1.3x, never below 1.0x.
"""

import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import click
import common
import yaml

from train import ALL_PROJECTIONS as LORA_KEYS  # noqa: E402  (common puts the project on sys.path)

RANK, ALPHA, LR, MAX_LEN, LAYERS = 16, 32, 1e-4, 512, 16
NEVER = 10**9


def write_data(examples, folder: Path):
    """The same examples in both formats: ours ({"query", "output"}) and mlx-lm chat ({"messages"})."""
    import data
    from prompt import messages

    (folder / "ours").mkdir(parents=True)
    (folder / "mlxlm").mkdir(parents=True)
    data.write_jsonl(folder / "ours" / "train.jsonl", examples)
    lines = [json.dumps({"messages": messages(e.query, e.output)}, ensure_ascii=False) for e in examples]
    (folder / "mlxlm" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def token_counts(model: str, examples):
    """(real tokens per epoch with our encoding, mlx-lm's loss tokens per epoch with its ChatDataset)."""
    from mlx_lm.tuner.datasets import ChatDataset
    from mlx_lm.utils import load_tokenizer

    from prompt import encode_example, messages

    tok = load_tokenizer(Path(model))
    real = sum(len(encode_example(tok, e.query, e.output)[0]) for e in examples)
    ds = ChatDataset([{"messages": messages(e.query, e.output)} for e in examples], tok, mask_prompt=True)
    # mlx-lm's default_loss keeps targets at steps offset..length (1-based): length - offset + 1 tokens
    loss_tokens = 0
    for i in range(len(ds)):
        ids, offset = ds.process(ds[i])
        loss_tokens += min(len(ids), MAX_LEN) - offset + 1
    return real, loss_tokens


def run_ours(model, folder, n_layers, iters, per_epoch, batch_size):
    cfg = {
        "model": model,
        "data": str(folder / "ours"),
        "adapter_path": str(folder / "ours-adapter"),
        "iters": iters,
        "batch_size": batch_size,
        "grad_accumulation_steps": 1,
        "learning_rate": LR,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "num_layers": n_layers,
        "rank": RANK,
        "alpha": ALPHA,
        "dropout": 0.0,
        "lora_keys": LORA_KEYS,
        "max_seq_length": MAX_LEN,
        "seed": common.SEED,
        "steps_per_report": per_epoch,
        "steps_per_eval": NEVER,
        "val_batches": 1,
        "save_every": NEVER,
    }
    path = folder / "ours.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wall, _ = common.run(
        [sys.executable, common.ROOT / "train.py", "sft", "--config", path, "--overwrite"],
        log=folder / "ours.log",
    )
    recs = [json.loads(x) for x in (folder / "ours-adapter" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "train_loss" in r]
    times, prev = [], 0
    for r in recs:  # trainer time of the interval = loss tokens / loss tokens per second
        times.append((r["trained_tokens"] - prev) / r["completion_tokens_per_sec"])
        prev = r["trained_tokens"]
    padding = recs[-1]["padding_share"]
    return times, wall, padding


REPORT_RE = re.compile(r"^\s*(\d+)\s+([\d.]+|nan)\s+\S\s+([\d,]+)\s+([\d.]+)k\s*$")


def run_mlx_lm(model, folder, n_layers, iters, per_epoch, batch_size, loss_tokens):
    cfg = {
        "model": model,
        "train": True,
        "data": str(folder / "mlxlm"),
        "fine_tune_type": "lora",
        "optimizer": "adamw",
        "optimizer_config": {"adamw": {"weight_decay": 0.0}},
        "mask_prompt": True,
        "seed": common.SEED,
        "num_layers": n_layers,
        "batch_size": batch_size,
        "iters": iters,
        "val_batches": 1,
        "learning_rate": LR,
        "steps_per_report": per_epoch,
        "steps_per_eval": NEVER,
        "save_every": NEVER,
        "adapter_path": str(folder / "mlxlm-adapter"),
        "max_seq_length": MAX_LEN,
        "grad_checkpoint": False,
        "grad_accumulation_steps": 1,
        "lora_parameters": {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": LORA_KEYS},
    }
    path = folder / "mlxlm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    wall, out = common.run([sys.executable, "-m", "mlx_lm", "lora", "-c", path], log=folder / "mlxlm.log", cwd=folder)
    reports = [m for m in map(REPORT_RE.match, common.ANSI_RE.sub("", out).splitlines()) if m]
    if len(reports) != iters // per_epoch:
        raise RuntimeError(f"expected {iters // per_epoch} mlx-lm report lines, parsed {len(reports)}:\n{out[-2000:]}")
    times = []
    for i, m in enumerate(reports):
        printed = float(m.group(4)) * 1000 - (float(reports[i - 1].group(4)) * 1000 if i else 0)
        if abs(printed - loss_tokens) > 0.02 * loss_tokens + 100:
            raise RuntimeError(f"mlx-lm trained {printed:.0f} loss tokens per epoch, expected {loss_tokens}")
        times.append(loss_tokens / float(m.group(3).replace(",", "")))
    return times, wall


@click.command()
@click.option("--model", default="tiny", show_default=True, help="tiny (random Qwen3), demo (SmolLM2-135M) or a path.")
@click.option("--examples", default=32, show_default=True, help="Examples per epoch (a multiple of --batch-size).")
@click.option("--epochs", default=3, show_default=True, help="Epochs; the first is warm-up (excluded).")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--quick", is_flag=True, help="Smoke run: 32 examples, 2 epochs.")
def main(model, examples, epochs, batch_size, quick):
    if quick:
        examples, epochs = 32, 2
    if examples % batch_size or epochs < 2:
        raise click.UsageError("--examples must be a multiple of --batch-size, and --epochs at least 2")
    path = common.model_path(model)
    baseline_model = common.float32_copy(path)
    n_layers = min(LAYERS, common.num_layers(path))
    exs = common.pick_examples(examples)
    real_tokens, loss_tokens = token_counts(path, exs)
    per_epoch = examples // batch_size
    iters = per_epoch * epochs
    with tempfile.TemporaryDirectory(prefix="qmd-bench-sft-") as tmp:
        folder = Path(tmp)
        write_data(exs, folder)
        ours, ours_wall, padding = run_ours(path, folder, n_layers, iters, per_epoch, batch_size)
        base, base_wall = run_mlx_lm(baseline_model, folder, n_layers, iters, per_epoch, batch_size, loss_tokens)
    t_ours, t_base = statistics.median(ours[1:]), statistics.median(base[1:])
    print(f"epoch seconds (first = warm-up): ours {[round(t, 2) for t in ours]}, mlx-lm {[round(t, 2) for t in base]}")
    common.record(
        f"sft: train.py sft vs mlx_lm lora ({model}, {examples} ex x {epochs} epochs, batch {batch_size})",
        f"{real_tokens / t_ours:,.0f} tok/s ({t_ours:.2f}s/epoch, wall {ours_wall:.0f}s)",
        f"{real_tokens / t_base:,.0f} tok/s ({t_base:.2f}s/epoch, wall {base_wall:.0f}s)",
        t_base / t_ours,
        ">=1.3x",
        f"real tokens/s, trainer time only, median of {epochs - 1} epochs after a warm-up epoch; "
        f"our padding share {100 * padding:.0f}%",
        save=not quick,
    )


if __name__ == "__main__":
    main()
