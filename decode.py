"""Batched sampling with a KV cache: the one decoder behind eval.py and grpo.py's rollouts.

    groups = decode.generate(model, prompts, n=4, max_tokens=200, stop_ids=tokenizer.eos_token_ids, temp=1.0)

Why not mlx-lm's BatchGenerator: it is built for serving (continuous batching, per-request samplers
and logits processors) and pays for that on every decoding step - a log-softmax over the whole
vocabulary for every row, the result split into one array per row, logits processors applied row
by row. Here the batch is fixed, so each step is one forward pass plus one batched sampling op:

  1. Prefill: every distinct prompt, all but its last token, once (batch 1, backbone only: no
     vocabulary projection for prompt positions). The per-prompt caches are merged, each repeated
     `n` times, into one left-padded batch cache (mlx-lm's BatchKVCache), so the `n` samples of a
     prompt share its prefill.
  2. Decode: feed the last sampled token of every row, take the (rows, V) logits of the last
     position and sample - greedy is an argmax, temperature sampling a categorical draw over
     logits / temp; top-k and top-p (on the untempered distribution, as llama.cpp and mlx-lm do)
     mask logits first; a presence penalty subtracts a constant from every token seen in the
     last `presence_window` tokens of the row (prompt included), for all rows at once.
     The next step's graph is queued (async_eval) before the current tokens are read back, so
     host-side bookkeeping overlaps the forward pass.
  3. Rows stop at a stop token (kept in the output: a policy must learn to stop) or at
     `max_tokens`. Finished rows are dropped from the batch once they are at least half of it
     (one cache copy per halving), not at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import runtime


@dataclass
class Sample:
    tokens: list  # generated token ids, the stop token included when finished
    finished: bool  # stopped at a stop token (False: cut at max_tokens)


def generate(
    model,
    prompts,
    *,
    n: int = 1,
    max_tokens: int = 256,
    stop_ids=(),
    temp: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    presence_penalty: float = 0.0,
    presence_window: int = 64,
) -> list[list[Sample]]:
    """`n` samples for each prompt (lists of token ids): [[Sample] * n] * len(prompts)."""
    import mlx.core as mx
    import numpy as np

    if n < 1 or max_tokens < 1:
        raise ValueError("need n >= 1 and max_tokens >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    rows = [i for i in range(len(prompts)) for _ in range(n)]  # row -> prompt index
    cache = _prefill(model, prompts, n)
    stops = set(int(t) for t in stop_ids)
    sample = _make_sampler(temp, top_p, top_k)

    window = None
    if presence_penalty:
        # (rows, presence_window) last tokens per row, -1 = empty; id V marks "nothing" in the scatter
        tails = np.full((len(rows), presence_window), -1, np.int32)
        for r, i in enumerate(rows):
            tail = prompts[i][-presence_window:]
            tails[r, presence_window - len(tail) :] = tail
        window = mx.array(tails)

    def penalised_sample(logits, window):
        V = logits.shape[-1]
        seen = mx.zeros((logits.shape[0], V + 1), mx.float32)  # column V absorbs the empty slots
        seen = mx.put_along_axis(seen, mx.where(window < 0, V, window), mx.array(1.0), axis=-1)
        return sample(logits - presence_penalty * seen[:, :V])

    def step(y, window):
        logits = model(y[:, None], cache=cache)[:, -1, :].astype(mx.float32)  # (rows, V)
        # the vocabulary-wide work, split over the CPU cores (runtime.rowwise)
        if window is None:
            return runtime.rowwise(sample, logits)
        return runtime.rowwise(penalised_sample, logits, window)

    out = [[] for _ in rows]
    done = np.zeros(len(rows), bool)
    live = np.arange(len(rows))  # batch position -> row
    y = mx.array([prompts[i][-1] for i in rows], mx.uint32)
    y = step(y, window)
    mx.async_eval(y)
    for t in range(max_tokens):
        if window is not None:
            window = mx.concatenate([window[:, 1:], y[:, None].astype(mx.int32)], axis=1)
        nxt = step(y, window) if t + 1 < max_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        toks = y.tolist()
        for pos, row in enumerate(live):
            if done[row]:
                continue
            out[row].append(toks[pos])
            if toks[pos] in stops:
                done[row] = True
        if done.all() or nxt is None:
            break
        y = nxt
        active = [pos for pos, row in enumerate(live) if not done[row]]
        if len(active) <= len(live) // 2:
            idx = mx.array(active)
            for c in cache:
                c.filter(idx)
            y = y[idx]
            window = window[idx] if window is not None else None
            live = live[active]
    samples = [Sample(out[r], bool(done[r])) for r in range(len(rows))]
    return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]


def _prefill(model, prompts, n):
    """One left-padded batch cache holding each prompt but its last token, each repeated n times."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    backbone = getattr(model, "model", model)  # hidden states only: prompt positions need no logits
    per_prompt = []
    for p in prompts:
        cache = make_prompt_cache(model)
        if len(p) > 1:
            backbone(mx.array(p[:-1])[None], cache=cache)
            mx.eval([c.state for c in cache])
        per_prompt.append(cache)
    layers = range(len(per_prompt[0]))
    return [per_prompt[0][k].merge([c[k] for c in per_prompt for _ in range(n)]) for k in layers]


def _make_sampler(temp, top_p, top_k):
    """(rows, V) float32 logits -> (rows,) token ids."""
    import mlx.core as mx

    if temp == 0:
        return lambda logits: mx.argmax(logits, axis=-1)

    def sample(logits):
        if top_k and 0 < top_k < logits.shape[-1]:
            drop = mx.argpartition(-logits, kth=top_k - 1, axis=-1)[..., top_k:]
            logits = mx.put_along_axis(logits, drop, mx.array(-float("inf"), logits.dtype), axis=-1)
        if 0 < top_p < 1:
            logits = _top_p(logits, top_p)
        return mx.random.categorical(logits * (1.0 / temp))

    return sample


def _top_p(logits, top_p):
    """Keep the smallest set of most likely tokens whose probability reaches top_p (untempered)."""
    import mlx.core as mx

    shifted = logits - mx.max(logits, axis=-1, keepdims=True)  # exp cannot overflow
    ordered = mx.sort(shifted, axis=-1)  # ascending
    probs = mx.exp(ordered)
    mass_above = mx.cumsum(probs, axis=-1, reverse=True, inclusive=False)
    total = mass_above[..., :1] + probs[..., :1]
    n_dropped = (mass_above >= top_p * total).sum(axis=-1, keepdims=True)
    threshold = mx.take_along_axis(ordered, n_dropped, axis=-1)
    return mx.where(shifted < threshold, -float("inf"), logits)
