"""Batched sampling with a KV cache: the one decoder behind eval.py and grpo.py's rollouts.

    groups = decode.generate(model, prompts, n=4, max_tokens=200, stop_ids=tokenizer.eos_token_ids, temp=1.0)

Why not mlx-lm's BatchGenerator: it is built for serving (continuous batching, per-request samplers
and logits processors) and pays for that on every decoding step - a log-softmax over the whole
vocabulary for every row, the result split into one array per row, logits processors applied row
by row. Here the batch is fixed, so each step is one forward pass plus one batched sampling op:

  1. Prefill: the prefix all prompts share once (batch 1), copied into every row, then every
     distinct prompt's tail but its last token, together in one batch (backbone only: no vocabulary
     projection for prompt positions). Each prompt's row is repeated `n` times in the left-padded
     batch cache (mlx-lm's BatchKVCache), so the `n` samples of a prompt share its prefill.
  2. Decode: feed the last sampled token of every row, take the (rows, V) logits of the last
     position and sample - greedy is an argmax, temperature sampling a categorical draw over
     logits / temp; top-k and top-p (on the untempered distribution, as llama.cpp and mlx-lm do)
     mask logits first; a presence penalty subtracts a constant from every token the row generated
     in its last `presence_window` tokens, the `penalty_exempt` ids (the newline) aside - the rule of
     node-llama-cpp, QMD's runtime, when it applies one (LlamaChat.getPenaltyTokens: the response's
     last 64 tokens, newline excluded; mlx-lm's processor and llama-cpp-python also penalise the
     prompt's tail and the newline). QMD's own setting applies none (prompt.QMD_SAMPLING). All rows at once: a
     gather and a scatter of `presence_window` columns, each token counted once, not a vocabulary-sized mask.
     The next step's graph is queued (async_eval) before the current tokens are read back, so
     host-side bookkeeping overlaps the forward pass.
     On the CPU, when cpujit.py builds MLX's fused kernels for this CPU, the attention of a decoding
     step (one query per row) runs as matmul, max, one compiled exp(scores - max) kernel, sum and
     matmul instead of mx.fast.scaled_dot_product_attention, whose CPU fallback's softmax computes
     exp one element at a time (_fused_attention; 64-row step of the demo model ~10% faster).
  3. Rows stop at a stop token (kept in the output: a policy must learn to stop) or at
     `max_tokens`. Finished rows are dropped from the batch once they are at least half of it
     (one cache copy per halving), not at every step.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
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
    penalty_exempt=(),
) -> list[list[Sample]]:
    """`n` samples for each prompt (lists of token ids): [[Sample] * n] * len(prompts)."""
    if n < 1 or max_tokens < 1:
        raise ValueError("need n >= 1 and max_tokens >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    import mlx.core as mx
    import numpy as np

    rows = [i for i in range(len(prompts)) for _ in range(n)]  # row -> prompt index
    cache = _prefill(model, prompts, n)
    stops = set(int(t) for t in stop_ids)
    sample = _make_sampler(temp, top_p, top_k)

    # The penalty window: (rows, presence_window) token ids and whether each slot counts. It starts
    # empty (id 0, not counted: only generated tokens are penalised) and slides by one each step.
    window = counted = None
    if presence_penalty:
        window = mx.zeros((len(rows), presence_window), mx.int32)
        counted = mx.zeros((len(rows), presence_window), mx.bool_)
        exempt = mx.array(sorted({int(t) for t in penalty_exempt}) or [-1], mx.int32)

    def penalised_sample(logits, window, counted):
        # (rows, W, W) -> (rows, W): slot j's token is penalised when some counting slot of the row
        # holds it. Every slot of one token then writes the same value back (duplicates agree), and a
        # token counts once however often it occurs (presence, not frequency).
        hit = mx.any((window[:, :, None] == window[:, None, :]) & counted[:, None, :], axis=-1)
        seen = mx.take_along_axis(logits, window, axis=-1) - presence_penalty * hit
        return sample(mx.put_along_axis(logits, window, seen, axis=-1))

    def step(y, window, counted):
        with _fused_attention(model):  # the graph is built here; async_eval runs it later
            logits = model(y[:, None], cache=cache)[:, -1, :].astype(mx.float32)  # (rows, V)
        # the vocabulary-wide work, split over the CPU cores (runtime.rowwise)
        if window is None:
            return runtime.rowwise(sample, logits)
        return runtime.rowwise(penalised_sample, logits, window, counted)

    out = [[] for _ in rows]
    done = np.zeros(len(rows), bool)
    live = np.arange(len(rows))  # batch position -> row
    y = mx.array([prompts[i][-1] for i in rows], mx.uint32)
    y = step(y, window, counted)
    mx.async_eval(y)
    for t in range(max_tokens):
        if window is not None:
            new = y[:, None].astype(mx.int32)
            window = mx.concatenate([window[:, 1:], new], axis=1)
            counted = mx.concatenate([counted[:, 1:], ~mx.any(new == exempt, axis=-1, keepdims=True)], axis=1)
        nxt = step(y, window, counted) if t + 1 < max_tokens else None
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
            if window is not None:
                window, counted = window[idx], counted[idx]
            live = live[active]
    samples = [Sample(out[r], bool(done[r])) for r in range(len(rows))]
    return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]


# ----------------------------------------------------------------------------
# Attention of a decoding step with a compiled softmax (CPU, native kernels)

_exp_shifted = None  # mx.compile(exp(scores - max)), built on first use


def attention_step(queries, keys, values, scale, mask=None):
    """softmax(q k^T * scale + mask) v for ONE query position, as mx.fast.scaled_dot_product_attention.

    queries (B, H, 1, D); keys, values (B, KV, Lk, D), H a multiple of KV (grouped-query heads);
    mask None or an array broadcastable to (B, H, 1, Lk): boolean (True = attend) or additive.
    The exp runs in one fused kernel (mx.compile), which cpujit.py makes a vectorised one."""
    import mlx.core as mx

    global _exp_shifted
    if _exp_shifted is None:
        _exp_shifted = mx.compile(lambda s, m: mx.exp(s - m), shapeless=True)
    B, H, _, D = queries.shape
    KV, Lk = keys.shape[1], keys.shape[2]
    G = H // KV
    q = (queries * scale).reshape(B, KV, G, D)  # a KV head's G query heads: one batched matmul
    s = q @ keys.swapaxes(-1, -2)  # (B, KV, G, Lk)
    if mask is not None:
        while mask.ndim < 4:
            mask = mask[None]
        if mask.shape[1] == H > 1:  # per-head mask (b, H, 1, Lk) -> (b, KV, G, Lk); else (b, 1, 1, Lk) broadcasts
            mask = mask.reshape(mask.shape[0], KV, G, Lk)
        s = mx.where(mask, s, -mx.inf) if mask.dtype == mx.bool_ else s + mask.astype(s.dtype)
    e = _exp_shifted(s, mx.max(s, axis=-1, keepdims=True))
    out = (e @ values) / e.sum(axis=-1, keepdims=True)  # (B, KV, G, D)
    return out.reshape(B, H, 1, D)


@contextmanager
def _fused_attention(model):
    """While the block builds a decoding step's graph, the model's mlx-lm module computes one-query
    attention with attention_step.

    mlx-lm's llama/qwen3 modules look `scaled_dot_product_attention` up as a module global at call
    time; it is swapped for the block and put back after. Only on the CPU with cpujit active (with
    MLX's scalar kernels the fused exp is no faster and the extra passes cost); prompts (more than
    one query), attention sinks and quantized caches go to mlx-lm's own."""
    import mlx.core as mx

    import cpujit

    module = sys.modules.get(type(model).__module__)
    original = getattr(module, "scaled_dot_product_attention", None)
    if original is None or mx.default_device().type != mx.cpu or not cpujit.active():
        yield
        return

    def sdpa(queries, keys, values, cache, scale, mask, sinks=None):  # mlx_lm.models.base's signature
        if queries.shape[2] != 1 or sinks is not None or hasattr(cache, "bits") or isinstance(mask, str):
            return original(queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks)
        return attention_step(queries, keys, values, scale, mask)

    module.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        module.scaled_dot_product_attention = original


def presence_processor(prompt_len: int, penalty: float, window: int = 64, exempt=()):
    """generate()'s presence penalty as a logits processor for one sequence (eval.py's mlx-lm and
    llama.cpp paths): `penalty` off every token among the last `window` generated ones - not the
    prompt's - but the `exempt` ids."""
    exempt = {int(t) for t in exempt}

    def process(tokens, logits):  # tokens: (prompt_len + generated,) ids; logits: (1, V) or (V,)
        # mlx arrays (mlx-lm) and numpy arrays (llama-cpp-python's logits_processor) alike
        ids = sorted(set(tokens[prompt_len:][-window:].tolist()) - exempt)
        if ids:
            logits[..., ids] = logits[..., ids] - penalty
        return logits

    return process


def _prefill(model, prompts, n):
    """One batch cache holding each prompt but its last token, each repeated n times.

    The prompts of a call share a long prefix (the system prompt QMD sends and the user turn's opening:
    ~75 of ~85 tokens), so it runs once, at batch 1, and is copied into every row; the distinct tails
    then run together, as right-padded batches of similar length (_length_buckets). BatchKVCache.finalize rolls each row's padding to its
    left, where the attention mask hides it; positions count from a row's first real token, so RoPE
    sees the same positions as in a one-prompt run. Prefill was per prompt at batch 1 before: 64 eval
    prompts took 24 s, nearly all of it per-call overhead of 30 layers on 80 tokens.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

    backbone = getattr(model, "model", model)  # hidden states only: prompt positions need no logits
    heads = [p[:-1] for p in prompts]
    prefix = make_prompt_cache(model)
    if not all(type(c) is KVCache for c in prefix):  # sliding-window or recurrent caches: one at a time
        return _prefill_each(model, prompts, n)
    shared = _common_prefix_len(heads)
    if shared:
        backbone(mx.array(heads[0][:shared])[None], cache=prefix)
    tails = [h[shared:] for h in heads]
    order = sorted(range(len(prompts)), key=lambda i: len(tails[i]))
    width = max(len(t) for t in tails)
    # the batch cache: row r (prompt i) holds [padding][shared prefix][tail i], right-justified at
    # shared + width; rows are written bucket by bucket straight into place (no concatenation)
    rows_of = [[i * n + k for k in range(n)] for i in range(len(prompts))]
    keys, values = [], []
    for chunk in _length_buckets([len(tails[i]) for i in order]):
        ids = [order[j] for j in chunk]
        part = _tail_prefill(backbone, prefix, shared, [tails[i] for i in ids])
        dest = mx.array([r for i in ids for r in rows_of[i]])
        span = part[0]._idx  # shared + the bucket's longest tail
        for layer, c in enumerate(part):
            k = mx.repeat(c.keys[..., :span, :], n, axis=0)
            v = mx.repeat(c.values[..., :span, :], n, axis=0)
            if len(keys) <= layer:
                shape = (len(prompts) * n, k.shape[1], shared + width)
                keys.append(mx.zeros((*shape, k.shape[3]), k.dtype))
                values.append(mx.zeros((*shape, v.shape[3]), v.dtype))
            keys[layer][dest, :, shared + width - span :] = k
            values[layer][dest, :, shared + width - span :] = v
    lengths = [len(tails[i]) for i in range(len(prompts)) for _ in range(n)]
    batch = []
    for k, v in zip(keys, values):
        b = BatchKVCache([width - n_tail for n_tail in lengths])
        b.keys, b.values, b._idx = k, v, shared + width
        b.offset = mx.array([shared + n_tail for n_tail in lengths])
        batch.append(b)
    mx.eval([b.state for b in batch])
    return batch


def _tail_prefill(backbone, prefix, shared, tails):
    """A BatchKVCache per layer: the shared prefix's keys/values copied into each row, then the
    tails (token lists) run as one right-padded batch and the padding rolled to the left."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    batch = []
    for c in prefix:
        b = BatchKVCache([0] * len(tails))
        if shared:
            b.keys = mx.repeat(c.keys[..., :shared, :], len(tails), axis=0)
            b.values = mx.repeat(c.values[..., :shared, :], len(tails), axis=0)
            b.offset, b._idx = b.offset + shared, shared
        batch.append(b)
    width = max(len(t) for t in tails)
    if width:
        for b in batch:
            b.prepare(right_padding=[width - len(t) for t in tails])
        padded = mx.array([t + [0] * (width - len(t)) for t in tails])  # (rows, width); pads are masked
        backbone(padded, cache=batch)
        for b in batch:
            b.finalize()
    return batch


def _length_buckets(lengths, slack=1.25):
    """Split sorted lengths into runs of consecutive indices whose padded size (rows x the longest)
    stays within `slack` times their real size (plus a few tokens): one long tail among short ones
    would otherwise pad every row to its length (64 eval prompts: 2048 tokens run for 700 real)."""
    chunks, start, real = [], 0, 0
    for j, n in enumerate(lengths):
        if j > start and (j - start + 1) * n > slack * (real + n) + 8:
            chunks.append(list(range(start, j)))
            start, real = j, 0
        real += n
    chunks.append(list(range(start, len(lengths))))
    return chunks


def _prefill_each(model, prompts, n):
    """_prefill for caches that cannot be batched that way: each prompt alone, then merged."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    backbone = getattr(model, "model", model)
    per_prompt = []
    for p in prompts:
        cache = make_prompt_cache(model)
        if len(p) > 1:
            backbone(mx.array(p[:-1])[None], cache=cache)
            mx.eval([c.state for c in cache])
        per_prompt.append(cache)
    layers = range(len(per_prompt[0]))
    return [per_prompt[0][k].merge([c[k] for c in per_prompt for _ in range(n)]) for k in layers]


def _common_prefix_len(seqs):
    """Length of the longest prefix that every list in seqs starts with."""
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


def _make_sampler(temp, top_p, top_k):
    """(rows, V) float32 logits -> (rows,) token ids.

    With top-k the candidates are picked first (_top_k_ids, no sort of the vocabulary) and top-p and
    the draw run on those k columns only - llama.cpp's order (top-k, then top-p over what is left).
    Sorting all 49k logits of 64 rows for top-p took 0.16 s a step, more than a third of the forward pass.
    """
    import mlx.core as mx

    if temp == 0:
        return lambda logits: mx.argmax(logits, axis=-1)

    def sample(logits):
        ids, cand = _candidates(logits, top_p, top_k)
        pick = mx.random.categorical(cand * (1.0 / temp))
        return pick if ids is None else mx.take_along_axis(ids, pick[:, None], axis=-1)[:, 0]

    return sample


def _candidates(logits, top_p, top_k):
    """(ids, logits) of the tokens left after top-k then top-p, the others at -inf: ids (rows, k) and
    their logits with top-k, or ids None and (rows, V) logits without it."""
    import mlx.core as mx

    ids = None
    if top_k and 0 < top_k < logits.shape[-1]:
        ids = _top_k_ids(logits, top_k)  # (rows, k), unordered
        logits = mx.take_along_axis(logits, ids, axis=-1)
    if 0 < top_p < 1:
        logits = _top_p(logits, top_p)
    return ids, logits


def _top_k_ids(logits, k, block=128):
    """Ids of the k largest of each row of (rows, V) logits, unordered: one argpartition over the
    vocabulary costs ~0.35 ms a row (64 rows of SmolLM2's 49k: 22 ms alone, next to a ~210 ms step).

    Two stages instead: the vocabulary as V / block blocks, the k blocks with the largest maxima, then
    the k largest of those k * block candidates (64 rows: 4 ms). Exact: a block holding one of the
    k largest values has a maximum at least that large, and at most k - 1 other blocks can have a
    larger one; under ties either stage may pick any of the equal values, as one argpartition may."""
    import mlx.core as mx

    rows, V = logits.shape
    if V % block or V // block < 4 * k:  # a vocabulary not in whole blocks, or too few of them to gain
        return mx.argpartition(-logits, kth=k - 1, axis=-1)[:, :k]
    blocks = logits.reshape(rows, V // block, block)
    best = mx.argpartition(-blocks.max(axis=-1), kth=k - 1, axis=-1)[:, :k]  # (rows, k) block numbers
    cand = mx.take_along_axis(blocks, best[..., None], axis=1).reshape(rows, k * block)
    pos = mx.argpartition(-cand, kth=k - 1, axis=-1)[:, :k]  # (rows, k) into cand
    return mx.take_along_axis(best, pos // block, axis=-1) * block + pos % block


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
