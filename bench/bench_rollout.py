"""GRPO rollout sampling: decode.generate (batched, shared prefill) vs one-at-a-time mlx_lm generation.

    python bench/bench_rollout.py [--model tiny|demo|PATH] [--prompts 4] [--group-size 4] [--max-tokens 64] [--quick]

The same model object, prompts (prompt.prompt_ids of training queries), sampler (temperature 1.0, as
grpo.py's default) and token cap. Ours: decode.generate (what grpo.py calls) samples all B x G
completions together, each prompt prefilled once and its KV cache shared by its G samples. The
baseline calls mlx-lm's generator once per completion (stream_generate, which mlx_lm.generate wraps;
used here to count the tokens exactly). Throughput = generated tokens / seconds, including the stop
token. Both paths are warmed up on one short call first (excluded); median over --repeats runs, each
run reseeded identically. On the tiny model (152k vocabulary, hidden size 64) the per-row work over
the vocabulary - the categorical draw, ~18 ns per vocabulary entry on one CPU thread - dominates and
grows with the batch, so batching gains little there; the demo model is the representative case.
Target: ours >= 5x.
"""

import statistics
import time
from collections import deque

import click
import common


def sample_ours(model, tok, prompts, group_size, max_tokens, sampler) -> int:
    import decode

    groups = decode.generate(model, prompts, n=group_size, max_tokens=max_tokens, stop_ids=tok.eos_token_ids, temp=1.0)
    return sum(len(s.tokens) for group in groups for s in group)


def sample_one_at_a_time(model, tok, prompts, group_size, max_tokens, sampler) -> int:
    from mlx_lm.generate import stream_generate

    n = 0
    for p in prompts:
        for _ in range(group_size):
            last = deque(stream_generate(model, tok, p, max_tokens=max_tokens, sampler=sampler), maxlen=1)
            n += last[0].generation_tokens if last else 0
    return n


@click.command()
@click.option("--model", default="tiny", show_default=True, help="tiny (random Qwen3), demo (SmolLM2-135M) or a path.")
@click.option("--prompts", default=4, show_default=True, help="Prompts per rollout batch (B).")
@click.option("--group-size", default=4, show_default=True, help="Completions per prompt (G).")
@click.option("--max-tokens", default=64, show_default=True, help="Token cap per completion.")
@click.option("--repeats", default=3, show_default=True, help="Timed runs per path (median).")
@click.option("--quick", is_flag=True, help="Smoke run: 2 prompts, 16 tokens, 1 repeat.")
def main(model, prompts, group_size, max_tokens, repeats, quick):
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    from prompt import prompt_ids

    if quick:
        prompts, max_tokens, repeats = 2, 16, 1
    m, tok = common.runtime.load_model(common.model_path(model))
    ids = [prompt_ids(tok, e.query) for e in common.pick_examples(prompts)]
    sampler = make_sampler(temp=1.0)
    results = {}
    for name, fn in (("ours", sample_ours), ("one-at-a-time", sample_one_at_a_time)):
        mx.random.seed(common.SEED)
        fn(m, tok, ids[:1], 2, 4, sampler)  # warm-up, excluded
        runs = []
        for _ in range(repeats):
            mx.random.seed(common.SEED)
            t = time.perf_counter()
            n = fn(m, tok, ids, group_size, max_tokens, sampler)
            runs.append((n / (time.perf_counter() - t), n))
        results[name] = (statistics.median(r for r, _ in runs), statistics.median(n for _, n in runs))
    (ours, n_ours), (base, n_base) = results["ours"], results["one-at-a-time"]
    common.record(
        f"rollout: decode.generate vs one-at-a-time generation ({model}, B={prompts} G={group_size}, {max_tokens} tok cap)",
        f"{ours:,.0f} tok/s ({n_ours:.0f} tokens)",
        f"{base:,.0f} tok/s ({n_base:.0f} tokens)",
        ours / base,
        ">=5x",
        f"temperature 1.0; median of {repeats} after a warm-up",
        save=not quick,
    )


if __name__ == "__main__":
    main()
