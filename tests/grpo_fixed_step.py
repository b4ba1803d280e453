"""GRPO steps on fixed rollouts, as one process or as a rank under mlx.launch (tests/test_distributed.py).

    python tests/grpo_fixed_step.py CONFIG.json OUT_FOLDER

Sampling is replaced by completions that are a pure function of the query (varied lengths, some cut
at the cap), so one process and N ranks train on exactly the same groups and their LoRA weights can
be compared. Two of the step's groups tie (equal rewards): with 2 ranks they are both rank 1's, so
that rank trains on nothing of its own and must still take part in the all-reduce. Rank 0 writes
OUT_FOLDER/adapters.safetensors and OUT_FOLDER/steps.json (what the callback saw).
"""

import json
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpo  # noqa: E402  (re-executes with OpenBLAS on Linux, as the scripts do)


def fixed_rollout(model, tokenizer, queries, args):
    import numpy as np

    from prompt import prompt_ids

    groups = []
    for q in queries:
        rng = np.random.default_rng(zlib.crc32(q.encode()))
        cap = args["max_completion_tokens"]
        comps = [
            rng.integers(100, 5000, size=int(rng.integers(2, cap + 1))).tolist() for _ in range(args["group_size"])
        ]
        finished = [len(c) < cap for c in comps]
        texts = [tokenizer.decode(c) for c in comps]
        groups.append(grpo.Group(q, prompt_ids(tokenizer, q), comps, finished, texts))
    return groups


def main(cfg_path, out):
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    import distributed

    cfg = json.loads(Path(cfg_path).read_text())
    world = distributed.World()
    prompts = [f"auth config {i}" for i in range(10)]
    step_queries = grpo.prompts_for_step(prompts, 0, cfg["batch_size"], cfg["seed"])
    ties = {step_queries[1], step_queries[3]}  # rank 1's share of step 0 with 2 ranks

    def reward_fn(query, text, truncated=False):
        return (0.5 if query in ties else (len(text) % 7) / 6), True

    mx.random.seed(0)
    model, tok, _, _ = grpo.build_policy(cfg)
    model.model.embed_tokens.weight = model.model.embed_tokens.weight * 10.0  # non-flat logits: the clip can bind
    optimizer = optim.Adam(learning_rate=cfg["learning_rate"])
    world.sync_start(model, optimizer, 0)
    seen = []

    class Record(grpo.Callback):
        interrupted = {"flag": False}

        def on_step(self, step, groups, stats):
            seen.append(
                {
                    "step": step,
                    "queries": [g.query for g in groups],
                    "rewards": [g.rewards.tolist() for g in groups],
                    "advantages": [g.advantages.tolist() for g in groups],
                    **{k: stats[k] for k in ("loss", "kl", "clipped", "binding", "grad_norm", "tokens")},
                }
            )

    grpo.rollout = fixed_rollout
    grpo.train_grpo(
        model,
        optimizer,
        prompts,
        cfg,
        tokenizer=tok,
        reward_fn=reward_fn,
        callback=distributed.CollectiveCallback(Record(), world),
        world=world,
    )
    if world.lead:
        Path(out).mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(Path(out) / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
        (Path(out) / "steps.json").write_text(json.dumps(seen))
    world.any_rank(False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
