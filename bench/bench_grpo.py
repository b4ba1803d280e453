"""GRPO step time and peak memory: grpo.py vs the GRPO trainer of mlx-lm-lora (PyPI `mlx-lm-lora`).

    python bench/bench_grpo.py [--model tiny|demo|PATH] [--batch-size 4] [--group-size 4] [--max-tokens 64] [--steps 5] [--quick]

mlx-lm-lora runs in its own virtual environment (.venv-bench, made by `make bench` from
bench/requirements-bench.txt with the same mlx and mlx-lm versions as .venv) so it can never change
the project's packages. Each side runs in a fresh child process (peak memory is per process), both
with OpenBLAS preloaded and float32 weights (the baseline gets a float32 copy of the model).

Same for both: model, LoRA (rank 4, scale 2, q/v projections, all blocks), Adam, learning rate,
beta 0.04, clip 0.2, B prompts x G completions per step, completion cap, sampler (temperature 1.0,
no top-p/top-k), stop at end-of-turn only, one optimizer update per rollout batch (ours:
--updates-per-batch 1), the same B x steps training queries (each used once, so both see exactly
the same prompts, in their own order), rendered with prompt.prompt_ids for both, and the same reward
function. The reward is reward.py's score plus a tie-break of 0.01 x len(text)/1000: on these
untrained models reward.py scores every sample 0, and grpo.py skips a group whose rewards are all
equal (no signal) - it would then measure rollouts only, while mlx-lm-lora still runs the backward
pass. The tie-break gives every group a spread, so both run the full update every step.

How mlx-lm-lora is driven: its library API (train_grpo with its GRPOTrainingArgs, iterate_grpo_batches,
rollouts and loss) on a model prepared exactly like ours, and its reference model loaded as its CLI
does (load_reference_model: a second copy of the base model). Its CLI is not used because it wraps
prompts in its own system prompt, puts LoRA on every linear layer and fixes top-k 20 / top-p 0.95.
Step time: ours from grpo.py's metrics.jsonl (step_s), mlx-lm-lora's from its training callback
(1 / iterations_per_second with steps_per_report 1); the first step is warm-up, excluded; median of
the rest. Peak memory: mx.get_peak_memory() of each process, loading included.
Where the difference comes from (profiled on 2 cores):
- rollouts: ours decodes all B x G completions together (decode.py: one forward and one batched
  draw per step), mlx-lm-lora B at a time (its BatchGenerator's completion_batch_size is the prompt
  batch size) with mlx-lm's per-step log-softmax. A CPU decode step of the demo model costs about
  the same for 1 row as for 8 (it streams the float32 weights), so width is nearly free.
- log-prob passes: ours runs each group's prompt once and its G completions against it
  (grpo.SharedPrompt); mlx-lm-lora runs prompt + completion for every row. With the demo's
  ~55-token prompts and 32-token completions that is ~45% fewer tokens per pass.
- vocabulary-wide work (exp, logsumexp, sampling; ~14-18 ns per entry on one CPU thread, the
  bulk of the tiny model's time): ours reuses the forward's exp(logits - max) in the backward pass
  and spreads it over the cores (runtime.rowwise); MLX runs it on one thread per stream.
- memory: its reference is a second copy of the model, ours the same weights with the LoRA off.
Target: ours >= 2x faster per step, at no more peak memory.
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import common

import data

KEYS = ["self_attn.q_proj", "self_attn.v_proj"]
RANK, ALPHA, LR, BETA, CLIP = 4, 8, 5e-6, 0.04, 0.2
NEVER = 10**9


def bench_score(query: str, text: str) -> tuple:
    """(reward, format-valid): reward.py's reward plus a small length tie-break (see the module docstring)."""
    import reward

    s = reward.score(query, text)
    return s.reward + 0.01 * min(len(text), 1000) / 1000, s.format_valid


# ----------------------------------------------------------------------------
# Child processes (each writes a JSON result file)


def child_ours(spec: dict) -> dict:
    import grpo

    cfg = {**grpo.GRPO_DEFAULTS, **spec["ours_cfg"]}
    grpo.run_grpo(cfg, overwrite=True, echo=lambda *a: None, scorer=bench_score)
    recs = [json.loads(x) for x in (Path(cfg["adapter_path"]) / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "step_s" in r]
    return {
        "step_s": [r["step_s"] for r in recs],
        "rollout_s": [r["rollout_s"] for r in recs],
        "peak_gb": max(r["peak_memory_gb"] for r in recs),
        "completion_len": statistics.mean(r["completion_len_mean"] for r in recs),
    }


def child_mlx_lm_lora(spec: dict) -> dict:
    import types

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load
    from mlx_lm_lora.train import load_reference_model
    from mlx_lm_lora.trainer.grpo_trainer import GRPOTrainingArgs, train_grpo

    from prompt import prompt_ids

    mx.random.seed(common.SEED)
    np.random.seed(common.SEED)
    path, n_layers = spec["baseline_model"], spec["num_layers"]
    model, tokenizer = load(path)
    model.freeze()
    linear_to_lora_layers(model, n_layers, {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": KEYS})
    ref_model = load_reference_model(types.SimpleNamespace(reference_model_path=None, model=path))
    dataset = [(prompt_ids(tokenizer, q), [], q, "") for q in spec["queries"]]

    def qmd_reward(prompts, completions, answer, types=None):
        return [bench_score(p, c)[0] for p, c in zip(prompts, completions)]

    reports = []

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info):
            reports.append(info)

    args = GRPOTrainingArgs(
        batch_size=spec["batch_size"],
        iters=spec["steps"],
        steps_per_report=1,
        steps_per_eval=NEVER,
        steps_per_save=NEVER,
        adapter_file=str(Path(spec["workdir"]) / "mlx-lm-lora-adapters.safetensors"),
        max_seq_length=2048,
        max_completion_length=spec["max_tokens"],
        group_size=spec["group_size"],
        beta=BETA,
        epsilon=CLIP,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
    )
    train_grpo(
        model=model,
        ref_model=ref_model,
        tokenizer=tokenizer,
        optimizer=optim.Adam(learning_rate=LR),
        train_dataset=dataset,
        reward_funcs=[qmd_reward],
        args=args,
        training_callback=Recorder(),
        end_answer_token="",
    )
    return {
        "step_s": [1.0 / r["iterations_per_second"] for r in reports],
        "peak_gb": max(r["peak_memory"] for r in reports),
        "completion_len": statistics.mean(r["train_average_generated_tokens"] for r in reports),
    }


# ----------------------------------------------------------------------------
# The benchmark


def noop_sft_adapter(model: str, folder: Path, n_layers: int) -> Path:
    """An SFT adapter that changes nothing (LoRA B = 0), since grpo.py trains on top of one."""
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    folder.mkdir(parents=True, exist_ok=True)
    m, _ = load(model)
    m.freeze()
    params = {"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0, "keys": KEYS}
    linear_to_lora_layers(m, n_layers, params)
    common.runtime.save_safetensors_atomic(
        folder / "adapters.safetensors", dict(tree_flatten(m.trainable_parameters()))
    )
    config = {"fine_tune_type": "lora", "num_layers": n_layers, "lora_parameters": params, "base_model": model}
    common.runtime.atomic_write_json(folder / "adapter_config.json", config)
    return folder


def run_child(python, side: str, spec: dict, workdir: Path) -> dict:
    spec_file, out_file = workdir / f"{side}-spec.json", workdir / f"{side}-result.json"
    spec_file.write_text(json.dumps(spec))
    common.run(
        [python, Path(__file__), "--child", side, "--spec", spec_file, "--out", out_file],
        log=workdir / f"{side}.log",
    )
    return json.loads(out_file.read_text())


def baseline_blocker() -> str | None:
    """Why mlx-lm-lora cannot run here, or None."""
    py = common.BENCH_VENV_PYTHON
    if not py.exists():
        return f"{py} missing: run `make bench` (creates it from bench/requirements-bench.txt)"
    probe = "import mlx.core as mx, mlx_lm, mlx_lm_lora; print(mx.__version__, mlx_lm.__version__)"
    proc = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if proc.returncode != 0:
        return "mlx-lm-lora does not import: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


@click.command()
@click.option("--model", default="tiny", show_default=True, help="tiny (random Qwen3), demo (SmolLM2-135M) or a path.")
@click.option("--batch-size", default=4, show_default=True, help="Prompts per step (B).")
@click.option("--group-size", default=4, show_default=True, help="Completions per prompt (G).")
@click.option("--max-tokens", default=64, show_default=True, help="Completion token cap.")
@click.option("--steps", default=5, show_default=True, help="Steps; the first is warm-up (excluded).")
@click.option("--quick", is_flag=True, help="Smoke run: B=2, G=2, 16 tokens, 2 steps.")
@click.option("--child", type=click.Choice(["ours", "mlx-lm-lora"]), hidden=True)
@click.option("--spec", type=click.Path(), hidden=True)
@click.option("--out", type=click.Path(), hidden=True)
def main(model, batch_size, group_size, max_tokens, steps, quick, child, spec, out):
    if child:
        spec = json.loads(Path(spec).read_text())
        result = child_ours(spec) if child == "ours" else child_mlx_lm_lora(spec)
        Path(out).write_text(json.dumps(result))
        return
    if quick:
        batch_size, group_size, max_tokens, steps = 2, 2, 16, 2
    if steps < 2:
        raise click.UsageError("--steps must be at least 2 (the first is warm-up)")
    name = f"grpo: grpo.py vs mlx-lm-lora GRPO ({model}, B={batch_size} G={group_size}, {max_tokens} tok cap, {steps} steps)"
    blocker = baseline_blocker()
    if blocker:
        common.record(name, "-", "-", None, ">=2x", blocker, status=f"BLOCKED: {blocker}", save=not quick)
        return

    path = common.model_path(model)
    n_layers = common.num_layers(path)
    examples = common.pick_examples(batch_size * steps)
    with tempfile.TemporaryDirectory(prefix="qmd-bench-grpo-") as tmp:
        work = Path(tmp)
        data.write_jsonl(work / "data" / "train.jsonl", examples)
        sft = noop_sft_adapter(path, work / "sft", n_layers)
        spec = {
            "workdir": str(work),
            "baseline_model": common.float32_copy(path),
            "num_layers": n_layers,
            "queries": [e.query for e in examples],
            "batch_size": batch_size,
            "group_size": group_size,
            "max_tokens": max_tokens,
            "steps": steps,
            "ours_cfg": {
                "model": path,
                "sft_adapter": str(sft),
                "adapter_path": str(work / "ours"),
                "data": str(work / "data"),
                "steps": steps,
                "batch_size": batch_size,
                "group_size": group_size,
                "updates_per_batch": 1,
                "learning_rate": LR,
                "warmup_steps": 0,
                "beta": BETA,
                "clip_eps": CLIP,
                "rank": RANK,
                "alpha": ALPHA,
                "dropout": 0.0,
                "num_layers": -1,
                "lora_keys": KEYS,
                "temperature": 1.0,
                "top_p": 1.0,
                "top_k": 0,
                "max_completion_tokens": max_tokens,
                "eval_every": NEVER,
                "eval_queries": 0,
                "drift_min_format": 0.0,
                "save_every": NEVER,
                "seed": common.SEED,
            },
        }
        ours = run_child(sys.executable, "ours", spec, work)
        try:
            base = run_child(common.BENCH_VENV_PYTHON, "mlx-lm-lora", spec, work)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[-1][:200]
            common.record(name, "-", "-", None, ">=2x", str(exc)[:300], status=f"BLOCKED: {reason}", save=not quick)
            return
    t_ours, t_base = statistics.median(ours["step_s"][1:]), statistics.median(base["step_s"][1:])
    print(
        f"step seconds (first = warm-up): ours {ours['step_s']} (rollouts {ours['rollout_s']}), mlx-lm-lora {[round(s, 2) for s in base['step_s']]}"
    )
    common.record(
        name,
        f"{t_ours:.2f}s/step, peak {ours['peak_gb']:.2f} GB",
        f"{t_base:.2f}s/step, peak {base['peak_gb']:.2f} GB",
        t_base / t_ours,
        ">=2x",
        f"median of {steps - 1} steps after a warm-up step; mean completion {ours['completion_len']:.0f} vs "
        f"{base['completion_len']:.0f} tokens; one update per batch; reward.py + length tie-break",
        save=not quick,
    )
    common.record(
        name.replace("grpo:", "grpo memory:", 1),
        f"{ours['peak_gb']:.2f} GB",
        f"{base['peak_gb']:.2f} GB",
        base["peak_gb"] / ours["peak_gb"],
        ">=1x",
        "peak mx.get_peak_memory() per process (baseline/ours); mlx-lm-lora keeps a second model as reference",
        save=not quick,
    )


if __name__ == "__main__":
    main()
