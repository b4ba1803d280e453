"""GRPO on top of the SFT adapter, with reward.py as the reward.

    python grpo.py --steps 200                       # adapters/sft -> adapters/grpo (best: adapters/grpo/best)
    python grpo.py --config configs/grpo.yaml --beta 0.04 --group-size 4
    python grpo.py --resume                          # continue adapters/grpo from its latest checkpoint
    python grpo.py --eval-only [--adapter A]         # evaluate an adapter on evals/queries.txt (eval.py's code)
    python grpo.py --reward retrieval --corpus ~/notes  # rewarded by QMD finding each query's source page
                                                     # (retrieval_reward.py; queries from the corpus, corpus_queries.py)

The shape (mlx-lm's trainer and nanochat's chat_rl.py are the models): train_grpo(model, optimizer,
prompts, args, reward_fn=, objective=, callback=) runs rollout -> score -> advantages -> update ->
callback for every step; each stage is a small function filling in a Group (one prompt, its G
completions, rewards, advantages, mask, rollout and reference log-probs). The reward and the
objective are passed in, the way mlx-lm's trainer takes loss= and iterate_batches=; the run around
it (folder, resume, evaluation, checkpoints) lives in run_grpo and its RunCallback.

The algorithm, one step:
  1. Take B prompts: queries of the SFT run's training split (its validation split is held out for
     model selection), reshuffled every epoch with --seed.
  2. Sample G completions per prompt from the current policy: base + fused SFT adapter + a fresh
     small GRPO LoRA (rank 4, q/v projections). All B x G completions decode together in
     decode.py's batched sampler; each prompt is prefilled once and shared by its G samples.
  3. Reward every completion with reward.py. A completion cut at max_completion_tokens without the
     end token is scored as truncated (0), so running to the cap never pays; with
     mask_truncated_completions it also gets no gradient. Advantage A = r - mean_group, divided by
     std_group + 1e-4 (scale_rewards: group), the batch's std + 1e-4 (batch) or nothing (none).
     A group whose rewards are all equal - or whose std is below min_group_std - carries no signal
     and is skipped entirely; the share of near-ties (std < LOW_STD) is logged every step.
  4. `updates_per_batch` optimizer steps on the batch. Per completion token:
        ratio = exp(logp - logp_rollout)
        loss  = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * KL
        KL    = k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1        (to the SFT model)
     with KL weighted by the detached ratio on reused rollouts (kl_ratio_correction: k3 is an
     estimate for samples of the current policy; the weight makes it one for the rollout's).
     logp_ref comes from the same weights with the GRPO LoRA switched off (its scale set to 0):
     no second model in memory. The objective (loss_type):
        grpo     the loss above averaged over all completion tokens of the batch (token-level,
                 the normalisation DAPO introduced; this project's GRPO has used it from the start)
        dr_grpo  the same sum divided by a constant, B x G x max_completion_tokens, and rewards not
                 scaled by the std (Dr. GRPO: neither long nor low-variance groups weigh more)
        dapo     grpo with clip-higher: eps_high 0.28 above eps_low 0.2 (epsilon_high); DAPO's
                 dynamic sampling is the skipping of zero-variance groups above
        gspo     one ratio per completion, exp(mean token log-ratio), clipped at the sequence level,
                 averaged over completions (GSPO; wants clip ranges near 3e-4 / 4e-4)
Simplifications, stated: the policy is the model's untempered distribution while rollouts may be
sampled with temperature/top-p/top-k (keep temperature 1.0 for strictly on-policy samples);
logp_rollout is not taken from the sampler: the first update's own forward pass runs on the
rollout weights and provides it (the ratio is exactly 1 there; later updates reuse it).
Log-probs are computed group by group: the prompt once (batch 1), then the G right-padded
completions attending to its keys and values (SharedPrompt; mlx-lm models take no attention mask,
and causal attention keeps padding after a row's end from touching it), in float32, as gathered
logits minus a logsumexp whose exp(logits - max) is reused by the backward pass
(token_logprobs): no (tokens x vocabulary) log-softmax is materialised.

Observability: one line per step, metrics.jsonl, grpo.png; held-out evaluation every `eval_every`
steps, its outputs sampled as QMD samples (`eval_sampling`, `eval_samples` per query; the best adapter
is kept in `best/`); a drift guard stops the run when the format-valid rate
of recent rollouts falls below `drift_min_format`. Checkpoints are atomic; --resume; Ctrl-C saves
and exits with status 130; a NaN/inf loss stops with a message and the best adapter kept.
Under `mlx.launch -n N` the step's prompts are split across ranks (train_grpo's world=, distributed.py).
"""

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux

import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from collections import deque  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import click  # noqa: E402

import data as data_mod  # noqa: E402
import decode  # noqa: E402
import distributed  # noqa: E402
import reward  # noqa: E402
from prompt import QMD_SAMPLING  # noqa: E402

GRPO_DEFAULTS = {
    "model": None,  # base model; default: the one the SFT adapter was trained on
    "sft_adapter": "adapters/sft",
    "adapter_path": "adapters/grpo",
    "data": None,  # default: the SFT run's data folder (split as that run split it)
    "steps": 200,
    "batch_size": 4,  # prompts per step
    "group_size": 4,  # completions per prompt
    "updates_per_batch": 2,  # optimizer steps per rollout batch (>1 makes the PPO clip matter)
    "learning_rate": 5e-6,
    "warmup_steps": 10,
    "max_grad_norm": 1.0,
    "beta": 0.04,
    "clip_eps": 0.2,  # PPO clip range below 1 (and above, unless epsilon_high)
    "epsilon_high": None,  # clip range above 1; default clip_eps, or 0.28 for dapo (clip-higher)
    "loss_type": "grpo",  # grpo | dr_grpo | dapo | gspo (see the module docstring)
    "scale_rewards": None,  # group | batch | none; default group, or none for dr_grpo
    "min_group_std": 0.0,  # groups whose reward std is below this are not trained on (0: only exact ties)
    "mask_truncated_completions": False,  # completions cut at the cap get no gradient
    "kl_ratio_correction": True,  # reused rollouts: KL estimate weighted by the (detached) ratio
    "rank": 4,
    "alpha": 8,
    "dropout": 0.0,
    "num_layers": -1,
    "lora_keys": ["self_attn.q_proj", "self_attn.v_proj"],
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "max_completion_tokens": 200,
    "eval_every": 25,
    "eval_queries": 32,  # held-out (validation split) queries scored at each evaluation
    "eval_max_tokens": 200,
    # How held-out outputs are generated: "qmd" samples them as QMD does at run time (QMD_SAMPLING),
    # so the held-out score, its breakage counts and best/ describe what users get; "greedy" is argmax
    # decoding, which loops far more often than sampling does (13 of 32 demo outputs hit the cap).
    "eval_sampling": "qmd",
    "eval_samples": 1,  # sampled outputs per held-out query (qmd): more give a steadier score for best/
    "drift_window": 10,
    "drift_min_format": 0.7,
    "save_every": 25,
    "keep_checkpoints": 2,
    "seed": 0,
    # reward: rubric (reward.py) or retrieval (retrieval_reward.py: does QMD find the query's source page
    # in `corpus`; rollout queries are then built from the corpus, split by document)
    "reward": "rubric",
    "corpus": None,  # markdown folder for reward: retrieval
    "corpus_heldout": 0.2,  # share of the corpus's documents held out (their queries never trained on)
    "rubric_weight": 0.3,  # reward = (1 - w) * retrieval metric + w * reward.py, 0 when reward.py gates
    "retrieval_metric": "ndcg@10",
    "retrieval_vectors": True,  # e5 vectors in the reward's search (false: BM25 + lex lines only)
}


K = runtime.Key
# Type and allowed range of every key (checked, naming the file or flag, before any model loads).
GRPO_SCHEMA = {
    "model": K(str, null=True),
    "sft_adapter": K(str),
    "adapter_path": K(str),
    "data": K(str, null=True),
    "steps": K(int, 1),
    "batch_size": K(int, 1),
    "group_size": K(int, 2),  # advantages are relative to the group: one completion has none
    "updates_per_batch": K(int, 1),
    "learning_rate": K(float, 0, 1, lo_open=True),
    "warmup_steps": K(int, 0),
    "max_grad_norm": K(float, 0, lo_open=True),
    "beta": K(float, 0),
    "clip_eps": K(float, 0, 1, lo_open=True, hi_open=True),
    "epsilon_high": K(float, 0, lo_open=True, null=True),
    "loss_type": K(str, choices=("grpo", "dr_grpo", "dapo", "gspo")),
    "scale_rewards": K(str, choices=("group", "batch", "none"), null=True),
    "min_group_std": K(float, 0),
    "mask_truncated_completions": K(bool),
    "kl_ratio_correction": K(bool),
    "rank": K(int, 1),
    "alpha": K(float, 0, lo_open=True),
    "dropout": K(float, 0, 1, hi_open=True),
    "num_layers": K(int, 1, also=(-1,)),
    "lora_keys": K(list),
    "temperature": K(float, 0),
    "top_p": K(float, 0, 1, lo_open=True),
    "top_k": K(int, 0),
    "max_completion_tokens": K(int, 1),
    "eval_every": K(int, 1),
    "eval_queries": K(int, 0),
    "eval_max_tokens": K(int, 1),
    "eval_sampling": K(str, choices=("qmd", "greedy")),
    "eval_samples": K(int, 1),
    "drift_window": K(int, 1),
    "drift_min_format": K(float, 0, 1),
    "save_every": K(int, 1),
    "keep_checkpoints": K(int, 1),
    "seed": K(int, 0),
    "reward": K(str, choices=("rubric", "retrieval")),
    "corpus": K(str, null=True),
    "corpus_heldout": K(float, 0, 1, hi_open=True),
    "rubric_weight": K(float, 0, 1),
    "retrieval_metric": K(str, choices=("ndcg@10", "mrr@10", "recall@10")),
    "retrieval_vectors": K(bool),
}
assert GRPO_SCHEMA.keys() == GRPO_DEFAULTS.keys()
# Keys a --resume may change from the command line (the rest come from the run's config.yaml).
SAFE_RESUME_KEYS = [
    "steps",
    "eval_every",
    "eval_queries",
    "eval_sampling",
    "eval_samples",
    "save_every",
    "keep_checkpoints",
    "learning_rate",
    "drift_window",
    "drift_min_format",
]
# Keys that must match for run_grpo(resume=True) to continue the same run.
RESUME_KEYS = [
    "model",
    "sft_adapter",
    "data",
    "batch_size",
    "group_size",
    "rank",
    "alpha",
    "num_layers",
    "lora_keys",
    "seed",
    "reward",
    "corpus",
]


TrainingDiverged = runtime.TrainingDiverged


# ----------------------------------------------------------------------------
# Model: base + fused SFT adapter + fresh GRPO LoRA; reference = GRPO LoRA switched off


def build_policy(cfg):
    """Base + fused SFT adapter (frozen) + a fresh GRPO LoRA: (model, tokenizer, num_layers, lora params)."""
    model, tokenizer = runtime.load_model(cfg["model"], cfg["sft_adapter"])
    runtime.fuse_lora(model)  # the SFT adapter becomes part of the frozen base
    num_layers, _ = runtime.add_lora(model, cfg, "GRPO LoRA")
    model.eval()  # no dropout in rollouts or log-prob passes
    return model, tokenizer, num_layers, runtime.lora_parameters(cfg)


@contextmanager
def lora_off(model):
    """The reference policy: every LoRA layer's contribution scaled to exactly zero."""
    layers = [m for _, m in model.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]
    saved = [m.scale for m in layers]
    for m in layers:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            m.scale = s


# ----------------------------------------------------------------------------
# Advantages


def group_advantages(
    rewards, eps: float = 1e-4, scale: str = "group", batch_std: float | None = None, min_std: float = 0.0
):
    """Group-relative advantages: r - mean, divided by the group's std + eps (scale "group"), the
    whole batch's std + eps ("batch") or nothing ("none"). A group whose std is below `min_std` (and
    any group of equal rewards) gets all-zero advantages: it carries no signal and is not trained on."""
    import numpy as np

    r = np.asarray(rewards, dtype=np.float64)
    std = r.std()
    if std < max(min_std, 1e-8):
        return np.zeros_like(r)
    if scale == "group":
        return (r - r.mean()) / (std + eps)
    if scale == "batch":
        return (r - r.mean()) / (batch_std + eps)
    return r - r.mean()


def reward_scaling(args) -> str:
    """scale_rewards as configured; unset: none for dr_grpo (its point), group otherwise."""
    return args["scale_rewards"] or ("none" if args["loss_type"] == "dr_grpo" else "group")


def clip_range(args) -> tuple:
    """(eps_low, eps_high): the ratio is clipped to [1 - eps_low, 1 + eps_high]."""
    lo = args["clip_eps"]
    hi = args["epsilon_high"] if args["epsilon_high"] is not None else (0.28 if args["loss_type"] == "dapo" else lo)
    return lo, hi


# ----------------------------------------------------------------------------
# Log-probs and the loss


SharedPrompt = runtime.SharedPrompt  # one implementation, shared with train.py's loss


def group_batch(completions):
    """Right-padded (G, C) completion tokens and the (G, C) mask of real tokens."""
    import mlx.core as mx
    import numpy as np

    C = max(len(c) for c in completions)
    comps = np.zeros((len(completions), C), np.int32)
    mask = np.zeros((len(completions), C), np.float32)
    for i, c in enumerate(completions):
        comps[i, : len(c)] = c
        mask[i, : len(c)] = 1.0
    return mx.array(comps), mx.array(mask)


def completion_logprobs(model, prompt, comps):
    """log p(token) of every completion token given the prompt: (G, C) float32.

    The prompt (all but its last token) runs once, batch 1; the G rows then run on
    [last prompt token, completion[:-1]] against its keys and values (SharedPrompt), so only the C
    positions that predict completion tokens are computed per row. Padding after a row's end cannot
    reach earlier positions (causal attention). Log-probs are gathered logits minus logsumexp: no
    (G, C, V) log-softmax is built.
    """
    import mlx.core as mx

    backbone = model.model
    caches = [SharedPrompt() for _ in model.layers]
    if len(prompt) > 1:
        backbone(mx.array(prompt[:-1])[None], cache=caches)
    for c in caches:
        c.offset = len(prompt) - 1
    G = comps.shape[0]
    inputs = mx.concatenate([mx.full((G, 1), prompt[-1], dtype=comps.dtype), comps[:, :-1]], axis=1)
    h = backbone(inputs, cache=caches)  # (G, C, hidden)
    logits = runtime.output_logits(model, h).astype(mx.float32)  # (G, C, V)
    return token_logprobs(logits, comps)


_CUSTOM_VJP = {}


def token_logprobs(logits, targets):
    """log softmax(logits)[targets] for (rows, C, V) logits and (rows, C) targets -> (rows, C).

    The vocabulary-wide work is the costly part of a log-prob pass on the CPU (exp runs at ~14 ns
    per element on one thread: a (4, 200, 151936) block is 0.5 G exps), so it is split across
    runtime.rowwise's streams, and the backward pass reuses the forward's exp(logits - max) instead
    of recomputing the softmax (one vocabulary pass fewer; costs one (rows, C, V) buffer until the
    backward pass). Reference and policy log-probs take this same path, so they are bitwise equal
    when the weights are (the KL is exactly 0 at the first step).
    """
    if "f" not in _CUSTOM_VJP:
        _CUSTOM_VJP["f"] = _make_token_logprobs()
    return _CUSTOM_VJP["f"](logits, targets)[0]


def _logprobs_fwd(logits, targets):
    import mlx.core as mx

    m = mx.stop_gradient(mx.max(logits, axis=-1, keepdims=True))
    e = mx.exp(logits - m)
    s = mx.sum(e, axis=-1, keepdims=True)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)
    return (picked - m - mx.log(s))[..., 0], e, s


def _logprobs_bwd(g, e, s, targets):
    import mlx.core as mx

    # d logp / d logits = onehot(target) - softmax
    d = e * (-g[..., None] / s)
    at = mx.take_along_axis(d, targets[..., None], axis=-1) + g[..., None]
    return mx.put_along_axis(d, targets[..., None], at, axis=-1)


def _make_token_logprobs():
    import mlx.core as mx

    @mx.custom_function
    def f(logits, targets):
        return runtime.rowwise(_logprobs_fwd, logits, targets)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        logits, targets = primals
        _, e, s = outputs
        return runtime.rowwise(_logprobs_bwd, cotangents[0], e, s, targets), mx.zeros_like(targets)

    return f


def grpo_token_loss(logp, old_logp, ref_logp, adv, mask, beta, clip_eps, clip_high=None, kl_ratio_correction=False):
    """Per-token clipped policy-gradient loss + beta * KL, masked. Shapes (G, C); adv (G,).

    KL is k3 = e^d - d - 1 with d = logp_ref - logp, an estimate of KL(policy || reference) for tokens
    sampled from the policy. With kl_ratio_correction it is weighted by the detached ratio
    policy / rollout policy: reused rollouts (the second and later updates of a batch) were sampled
    from the rollout policy, and the weight makes the estimate unbiased for the current one. On the
    first update the ratio is exactly 1, so nothing changes there.
    Returns (loss, KL, clipped) per token; clipped counts tokens outside the clip range."""
    import mlx.core as mx

    hi = clip_eps if clip_high is None else clip_high
    ratio = mx.exp(logp - old_logp)
    a = adv[:, None]
    pg = -mx.minimum(ratio * a, mx.clip(ratio, 1.0 - clip_eps, 1.0 + hi) * a)
    d = ref_logp - logp
    kl = mx.expm1(d) - d  # k3 = e^d - d - 1, without float32 cancellation near d = 0
    if kl_ratio_correction:
        kl = mx.stop_gradient(ratio) * kl
    clipped = ((ratio < 1.0 - clip_eps) | (ratio > 1.0 + hi)).astype(mx.float32)
    return (pg + beta * kl) * mask, kl * mask, clipped * mask


def binding_clips(ratio, adv, lo, hi):
    """Tokens where the clip binds: the clipped term is the smaller one, so the token gets no
    policy gradient (ratio above 1 + hi with A > 0, or below 1 - lo with A < 0)."""
    a = adv[:, None]
    return ((ratio > 1.0 + hi) & (a > 0)) | ((ratio < 1.0 - lo) & (a < 0))


# ----------------------------------------------------------------------------
# The training loop: rollout -> score -> advantages -> update, customised by passing functions


@dataclass
class Group:
    """One prompt and its G sampled completions; each stage of a step fills in its part."""

    query: str
    prompt: list  # prompt token ids
    completions: list  # G lists of completion token ids (the end token included when finished)
    finished: list  # per completion: ended with an end token (False: cut at max_completion_tokens)
    texts: list = field(default_factory=list)  # decoded completions, end tokens removed
    rewards: Any = None  # (G,) numpy
    valid: list = field(default_factory=list)  # per completion: format-valid
    advantages: Any = None  # (G,) numpy; all zero: the group carries no signal and is not trained on
    tokens: Any = None  # (G, C) right-padded mx.array of completion tokens
    mask: Any = None  # (G, C) 1.0 where a real completion token is trained on
    old_logp: Any = None  # (G, C) log-probs under the rollout policy (set by the first update)
    ref_logp: Any = None  # (G, C) log-probs under the reference (SFT) policy

    @property
    def trains(self) -> bool:
        import numpy as np

        return self.advantages is not None and bool(np.any(self.advantages != 0))


def train_grpo(
    model, optimizer, prompts, args, *, tokenizer, reward_fn=None, objective=None, callback=None, start=0, world=None
):
    """GRPO from step `start` to args["steps"]; returns the last step completed.

    prompts: the training queries; args: the run's (checked) config; reward_fn(query, text,
    truncated=) -> (reward, format-valid), default reward.py's (default_scorer);
    objective(logp, old_logp, group, batch, args) -> (loss, stats) is the loss of one group, default
    OBJECTIVES[args["loss_type"]]; callback.on_step(step, groups, stats) logs, evaluates and saves,
    callback.should_stop() ends the run between steps (Ctrl-C, drift guard). The tokenizer renders
    prompts and decodes completions for the reward.

    world (distributed.World; under mlx.launch -n N): each rank rolls out and trains on its share of
    the step's B prompts (rows r, r+N, ...); advantages and the callback see every rank's groups in
    one-process order; update() sums token counts and gradients over ranks, so every rank applies
    the one-process update of the whole batch. The callback should be a CollectiveCallback.
    """
    import mlx.core as mx
    import mlx.nn as nn

    reward_fn = reward_fn or default_scorer
    objective = objective or OBJECTIVES[args["loss_type"]]
    callback = callback or Callback()

    def group_loss(model, group, batch):
        logp = completion_logprobs(model, group.prompt, group.tokens)
        old = group.old_logp if group.old_logp is not None else mx.stop_gradient(logp)
        loss, stats = objective(logp, old, group, batch, args)
        return loss, (stats, old)

    loss_and_grad = nn.value_and_grad(model, group_loss)
    world = world or distributed.World()
    step = start
    while step < args["steps"] and not callback.should_stop():
        t0 = time.perf_counter()
        mx.random.seed((args["seed"] * 100003 + step) * world.size + world.rank)
        queries = world.shard(prompts_for_step(prompts, step, args["batch_size"], args["seed"]))
        groups = rollout(model, tokenizer, queries, args)
        t_roll = time.perf_counter() - t0
        score(groups, reward_fn)
        everyone = world.gather_shards(groups, _group_json, _group_from_json)  # this rank's groups included
        compute_advantages(everyone, args)
        try:
            stats = update(model, optimizer, [g for g in groups if g.trains], args, loss_and_grad, world)
        except TrainingDiverged as exc:
            raise TrainingDiverged(f"{exc} at step {step + 1}") from None
        step += 1
        stats.update(rollout_s=t_roll, step_s=time.perf_counter() - t0)
        callback.on_step(step, everyone, stats)
    return step


def _group_json(g) -> dict:
    """What other ranks need of a group: advantages (batch std), metrics (rewards, lengths, validity)."""
    return {"query": g.query, "completions": g.completions, "finished": g.finished, "texts": g.texts,
            "rewards": g.rewards.tolist(), "valid": g.valid}  # fmt: skip


def _group_from_json(d) -> "Group":
    import numpy as np

    return Group(d["query"], [], d["completions"], d["finished"], d["texts"], np.array(d["rewards"]), d["valid"])


class Callback:
    """The loop's hooks; the default does nothing and never stops."""

    def should_stop(self) -> bool:
        return False

    def on_step(self, step, groups, stats) -> None:
        pass


def rollout(model, tokenizer, queries, args) -> list:
    """G sampled completions for each query, all B x G decoded together (decode.py)."""
    from prompt import prompt_ids

    prompts = [prompt_ids(tokenizer, q) for q in queries]
    samples = decode.generate(
        model,
        prompts,
        n=args["group_size"],
        max_tokens=args["max_completion_tokens"],
        stop_ids=tokenizer.eos_token_ids,
        temp=args["temperature"],
        top_p=args["top_p"],
        top_k=args["top_k"],
    )
    eos = set(tokenizer.eos_token_ids)
    return [
        Group(
            query=q,
            prompt=p,
            completions=[s.tokens for s in group],
            finished=[s.finished for s in group],
            texts=[tokenizer.decode([t for t in s.tokens if t not in eos]) for s in group],
        )
        for q, p, group in zip(queries, prompts, samples)
    ]


def score(groups, reward_fn) -> None:
    """Every completion's reward and format validity; a completion cut at the cap is scored as truncated."""
    import numpy as np

    if hasattr(reward_fn, "prepare"):  # a reward that batches its work (retrieval_reward: the step's embeddings)
        reward_fn.prepare([(g.query, t, not f) for g in groups for t, f in zip(g.texts, g.finished)])
    for g in groups:
        scored = [reward_fn(g.query, t, truncated=not f) for t, f in zip(g.texts, g.finished)]
        g.rewards = np.array([r for r, _ in scored], dtype=np.float64)
        g.valid = [ok for _, ok in scored]


def compute_advantages(groups, args) -> None:
    import numpy as np

    scale = reward_scaling(args)
    batch_std = float(np.concatenate([g.rewards for g in groups]).std())
    for g in groups:
        g.advantages = group_advantages(g.rewards, scale=scale, batch_std=batch_std, min_std=args["min_group_std"])


def update(model, optimizer, groups, args, loss_and_grad, world=None) -> dict:
    """`updates_per_batch` optimizer steps on the groups that carry signal; the stats of the last one.

    The reference log-probs come first (GRPO LoRA off, no gradients). The rollout policy's log-probs
    ("old") are not a separate pass: the first update runs with the rollout weights, so its own
    forward pass provides them and later updates reuse them.

    With a `world` of N ranks, `groups` are this rank's: the token and sequence counts (the loss's
    normaliser) and the loss sums are summed over ranks, and so are the gradients before clipping
    (each rank's share is already divided by the whole batch's count), so every rank applies the
    one-process update; a rank whose groups all tie still takes part, with zero gradients.
    """
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_map

    world = world or distributed.World()

    masking = args["mask_truncated_completions"]
    for g in groups:
        g.tokens, g.mask = group_batch(g.completions)
        if masking and not all(g.finished):
            g.mask = g.mask * mx.array(g.finished, dtype=mx.float32)[:, None]
        with lora_off(model):
            g.ref_logp = completion_logprobs(model, g.prompt, g.tokens)
        mx.eval(g.ref_logp)
        g.old_logp = None
    kept = [(c, f) for g in groups for c, f in zip(g.completions, g.finished) if f or not masking]
    tokens, sequences = world.sum_values([sum(len(c) for c, _ in kept), len(kept)])
    batch = {
        "tokens": int(tokens),  # completion tokens trained on (the whole batch's, on every rank)
        "sequences": int(sequences),
        "budget": args["batch_size"] * args["group_size"] * args["max_completion_tokens"],
    }
    stats = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "binding": 0.0, "grad_norm": 0.0, "tokens": batch["tokens"]}
    for _ in range(args["updates_per_batch"] if batch["tokens"] else 0):
        grads, loss_sum, kl_sum, clip_sum, bind_sum = None, 0.0, 0.0, 0.0, 0.0
        for g in groups:
            (loss, (gstats, old)), grad = loss_and_grad(model, g, batch)
            g.old_logp = old
            grads = grad if grads is None else _tree_add(grads, grad)
            mx.eval(grads, loss, gstats, old)
            loss_sum += loss.item()
            kl_sum += gstats["kl"].item()
            clip_sum += gstats["clipped"].item()
            bind_sum += gstats.get("binding", mx.array(0.0)).item()
        if world.size > 1:
            if grads is None:
                grads = tree_map(mx.zeros_like, model.trainable_parameters())
            grads = world.sum_tree(grads)
            loss_sum, kl_sum, clip_sum, bind_sum = world.sum_values([loss_sum, kl_sum, clip_sum, bind_sum])
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(f"loss is {loss_sum}")
        grads, norm = optim.clip_grad_norm(grads, args["max_grad_norm"])
        optimizer.update(model, grads)
        mx.eval(model.trainable_parameters(), optimizer.state)
        stats.update(loss=loss_sum, kl=kl_sum, clipped=clip_sum, binding=bind_sum, grad_norm=norm.item())
    return stats


def grpo_objective(logp, old, group, batch, args):
    """grpo, dr_grpo and dapo: the clipped token-level loss + beta * KL, summed over this group's
    tokens and divided by the batch's normaliser, so the groups' losses add up to the batch loss:
    its completion-token count (grpo, dapo) or the constant B x G x max_completion_tokens (dr_grpo)."""
    import mlx.core as mx

    lo, hi = clip_range(args)
    adv = mx.array(group.advantages, dtype=mx.float32)
    per_tok, kl, clipped = grpo_token_loss(
        logp, old, group.ref_logp, adv, group.mask, args["beta"], lo, hi, args["kl_ratio_correction"]
    )
    binding = binding_clips(mx.exp(logp - old), adv, lo, hi) * group.mask
    stats = {
        "kl": mx.stop_gradient(kl.sum()),
        "clipped": mx.stop_gradient(clipped.sum()),
        "binding": mx.stop_gradient(binding.sum()),
    }
    norm = batch["budget"] if args["loss_type"] == "dr_grpo" else batch["tokens"]
    return per_tok.sum() / norm, stats


def gspo_objective(logp, old, group, batch, args):
    """gspo: one importance ratio per completion, s = exp(mean over its tokens of logp - logp_rollout),
    clipped at the sequence level; loss per completion -min(s A, clip(s) A) + beta * its mean token
    KL, averaged over the batch's completions. GSPO's clip range is far narrower than PPO's (its
    paper: 3e-4 / 4e-4): set clip_eps and epsilon_high accordingly."""
    import mlx.core as mx

    lo, hi = clip_range(args)
    mask = group.mask
    adv = mx.array(group.advantages, dtype=mx.float32)
    lens = mask.sum(axis=1)
    n = mx.maximum(lens, 1.0)
    s = mx.exp(((logp - old) * mask).sum(axis=1) / n)
    pg = -mx.minimum(s * adv, mx.clip(s, 1.0 - lo, 1.0 + hi) * adv)
    d = group.ref_logp - logp
    kl = mx.expm1(d) - d
    if args["kl_ratio_correction"]:
        kl = mx.stop_gradient(mx.exp(logp - old)) * kl
    kl_seq = (kl * mask).sum(axis=1) / n
    live = (lens > 0).astype(mx.float32)
    loss = ((pg + args["beta"] * kl_seq) * live).sum() / batch["sequences"]
    out = ((s < 1.0 - lo) | (s > 1.0 + hi)).astype(mx.float32)
    bind = (((s > 1.0 + hi) & (adv > 0)) | ((s < 1.0 - lo) & (adv < 0))).astype(mx.float32)
    stats = {
        "kl": mx.stop_gradient((kl * mask).sum()),
        "clipped": mx.stop_gradient((out * lens).sum()),  # in tokens, as for the token-level losses
        "binding": mx.stop_gradient((bind * lens).sum()),
    }
    return loss, stats


OBJECTIVES = {"grpo": grpo_objective, "dr_grpo": grpo_objective, "dapo": grpo_objective, "gspo": gspo_objective}


# A group whose reward std is below this is a near-tie: reward.py sums many small shaped terms, so
# completions of equal quality differ by a few hundredths, and std scaling turns that noise into
# full-size advantages. Its share is logged every step (low_std_groups); min_group_std drops them.
LOW_STD = 0.05


def step_record(step, groups, stats, peak_memory_gb, learning_rate) -> dict:
    """The step's line of metrics.jsonl."""
    import numpy as np

    rewards = np.concatenate([g.rewards for g in groups])
    lengths = [len(c) for g in groups for c in g.completions]
    n_tokens = stats["tokens"]
    return {
        "step": step,
        "reward_mean": round(float(np.mean(rewards)), 4),
        "reward_std": round(float(np.std(rewards)), 4),
        "format_valid": round(float(np.mean([v for g in groups for v in g.valid])), 4),
        "zero_variance_groups": round(1 - sum(g.trains for g in groups) / len(groups), 3),
        "kl": round(stats["kl"] / max(n_tokens, 1), 6),
        "clip_ratio": round(stats["clipped"] / max(n_tokens, 1), 4),
        "clip_binding": round(stats["binding"] / max(n_tokens, 1), 4),  # tokens the clip took the gradient from
        "low_std_groups": round(float(np.mean([g.rewards.std() < LOW_STD for g in groups])), 3),
        "grad_norm": round(stats["grad_norm"], 6),
        "loss": round(stats["loss"], 6),
        "completion_len_mean": round(float(np.mean(lengths)), 1),
        "completion_len_max": int(max(lengths)),
        "truncated": round(float(np.mean([not f for g in groups for f in g.finished])), 3),
        "tokens_per_sec": round(sum(lengths) / max(stats["rollout_s"], 1e-9), 1),
        "rollout_s": round(stats["rollout_s"], 2),
        "step_s": round(stats["step_s"], 2),
        "peak_memory_gb": round(peak_memory_gb, 3),
        "learning_rate": learning_rate,
    }


# ----------------------------------------------------------------------------
# The run


def sft_split(sft_adapter) -> dict:
    """How the SFT run split its data: {data, valid_fraction, seed} from its adapter_config.json
    (train.py records its whole config there). An adapter from elsewhere has none: the defaults."""
    try:
        recorded = json.loads((Path(sft_adapter) / "adapter_config.json").read_text()).get("train_config") or {}
    except (OSError, json.JSONDecodeError):
        recorded = {}
    return {
        "data": recorded.get("data"),
        "valid_fraction": recorded.get("valid_fraction", 0.05),
        "seed": recorded.get("seed", 0),
        "recorded": "valid_fraction" in recorded and "seed" in recorded,
    }


def load_prompts(cfg, echo=print):
    """(train queries for rollouts, held-out (query, category) pairs for evaluation): the SFT run's
    own split (data.load_split with its folder, fraction and seed), so the held-out queries are
    exactly SFT's validation queries and none of them was trained on."""
    sft = sft_split(cfg["sft_adapter"])
    folder = cfg["data"] or sft["data"] or "data"
    if not sft["recorded"]:
        echo(
            f"warning: {cfg['sft_adapter']} does not record how its data was split; splitting {folder} with "
            f"valid_fraction {sft['valid_fraction']}, seed {sft['seed']} - held-out queries may overlap its training data"
        )
    elif sft["data"] and Path(folder).resolve() != Path(sft["data"]).resolve():
        echo(f"warning: --data {folder} is not the SFT run's data ({sft['data']}): split with its fraction and seed")
    train, valid = data_mod.load_split(folder, sft["valid_fraction"], sft["seed"])
    return [e.query for e in train], [(e.query, e.category) for e in valid]


def prompts_for_step(queries, step, batch_size, seed):
    """The step's B queries: a pure function of (seed, step), reshuffled each epoch."""
    import numpy as np

    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(k, len(queries))
        order = np.random.default_rng([seed, epoch]).permutation(len(queries))
        out.append(queries[order[i]])
    return out


def save_adapter_folder(folder: Path, model, cfg, num_layers, extra=None):
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    runtime.save_safetensors_atomic(folder / "adapters.safetensors", dict(tree_flatten(model.trainable_parameters())))
    runtime.atomic_write_json(folder / "adapter_config.json", adapter_config(cfg, num_layers, extra))


def adapter_config(cfg, num_layers, extra=None) -> dict:
    """mlx-lm's adapter keys, plus `parent_adapter` (the SFT adapter this LoRA sits on)."""
    return runtime.adapter_config(
        cfg, num_layers, {"parent_adapter": str(Path(cfg["sft_adapter"]).resolve()), **(extra or {})}
    )


def default_scorer(query: str, text: str, truncated: bool = False) -> tuple:
    """(reward in [0, 1], format-valid) from reward.py: the single source of truth. A rollout cut at
    max_completion_tokens (truncated) scores 0: GRPO must not learn that running to the cap pays."""
    s = reward.score(query, text, truncated=truncated)
    return s.reward, s.format_valid


# What a GRPO run writes into its folder: the only files --overwrite replaces (anything else there stays).
RUN_OUTPUTS = [
    "checkpoints",
    "best",
    "adapters.safetensors",
    "adapter_config.json",
    "config.yaml",
    "metrics.jsonl",
    "grpo.png",
    "corpus-train.jsonl",
    "corpus-heldout.jsonl",
]


def run_inputs(cfg) -> dict:
    """The folders and files a GRPO run reads: its output folder must be none of them (nor hold one)."""
    inputs = {"SFT adapter": cfg["sft_adapter"], "data folder": cfg["data"], "base model": cfg["model"]}
    if cfg.get("reward") == "retrieval":
        inputs["corpus"] = cfg["corpus"]
    if (Path(cfg["sft_adapter"]) / "adapter_config.json").exists():
        try:
            for i, parent in enumerate(runtime.adapter_chain(cfg["sft_adapter"])[:-1]):
                inputs[f"parent adapter {i + 1}"] = str(parent)
        except runtime.ModelError:
            pass  # a broken chain is reported when the model loads
    return inputs


def _takes_truncated(scorer) -> bool:
    """Whether a scorer accepts truncated= (custom scorers written for (query, text) still work)."""
    try:
        params = inspect.signature(scorer).parameters
    except (TypeError, ValueError):
        return False
    return "truncated" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def run_grpo(cfg, resume=False, overwrite=False, echo=print, scorer=default_scorer) -> dict:
    """Run (or resume) GRPO. With --overwrite the previous run is moved aside, not deleted, until the
    new run has written its first checkpoint; a failure before that puts it back."""
    cfg = runtime.check_config(cfg, GRPO_SCHEMA)
    world = distributed.World()
    if world.size > 1:  # mlx.launch: rank 0's config everywhere; only rank 0 prints and writes
        cfg = world.broadcast_json(cfg)
        if cfg["batch_size"] % world.size:
            raise runtime.ConfigError(
                f"batch_size {cfg['batch_size']} is the prompts of a whole step and must be a multiple of the {world.size} ranks"
            )
        if not world.lead:
            return _run_grpo(cfg, resume, overwrite, lambda *a, **k: None, scorer, None, world)
    replaced = runtime.ReplacedRun(cfg["adapter_path"], RUN_OUTPUTS)
    try:
        return _run_grpo(cfg, resume, overwrite, echo, scorer, replaced, world)
    except BaseException:
        if replaced.restore():
            echo(
                f"{cfg['adapter_path']}: the new run stopped before its first checkpoint; the previous run is restored"
            )
        raise


def _run_grpo(cfg, resume, overwrite, echo, scorer, replaced, world) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim

    sft_cfg_file = Path(cfg["sft_adapter"]) / "adapter_config.json"
    if not sft_cfg_file.exists():
        raise runtime.ModelError(
            f"{cfg['sft_adapter']}: no SFT adapter here (train one with `python train.py sft`, or pass --sft-adapter)"
        )
    if cfg["model"] is None:
        cfg = {**cfg, "model": json.loads(sft_cfg_file.read_text()).get("base_model")}
    if cfg["data"] is None:
        cfg = {**cfg, "data": sft_split(cfg["sft_adapter"])["data"] or "data"}
    out = Path(cfg["adapter_path"])
    lead = world.lead  # only rank 0 reads and writes the run folder
    existing = lead and runtime.open_run_folder(
        cfg,
        run_inputs(cfg),
        replaced,
        resume,
        overwrite,
        lambda: runtime.load_config(out / "config.yaml", GRPO_DEFAULTS) if (out / "config.yaml").exists() else None,
        RESUME_KEYS,
        echo,
    )

    train_q, heldout = load_prompts(cfg, echo)
    if len(train_q) < cfg["batch_size"]:
        raise data_mod.DataError([f"{cfg['data']}: only {len(train_q)} training queries"])
    heldout = heldout[: cfg["eval_queries"]]
    corpus_split = None
    if cfg["reward"] == "retrieval":  # rollouts on the corpus's own queries, rewarded by retrieval
        import retrieval_reward

        corpus_split = retrieval_reward.setup(cfg, echo)
        train_q, scorer = [q.query for q in corpus_split["train"]], corpus_split["scorer"]
        if len(train_q) < cfg["batch_size"]:
            raise data_mod.DataError([f"{cfg['corpus']}: only {len(train_q)} training queries"])
    sft_weights = Path(cfg["sft_adapter"]) / "adapters.safetensors"
    ours = distributed.fingerprint_texts(train_q) + [distributed.file_crc(sft_weights)] if world.size > 1 else []
    mismatch = world.check_same("the prompts and SFT adapter (count, CRC32, adapter CRC32)", ours)
    if mismatch:
        raise data_mod.DataError(
            [f"{mismatch}: every machine needs the same --data and --sft-adapter at the same path"]
        )
    mx.random.seed(cfg["seed"])  # the GRPO LoRA's initial lora_a
    echo(f"loading {cfg['model']} + {cfg['sft_adapter']} ...")
    model, tokenizer, num_layers, params = build_policy(cfg)
    warmup = runtime.fit_warmup(
        cfg["warmup_steps"], cfg["steps"] * cfg["updates_per_batch"], "steps x updates_per_batch", echo
    )

    def lr_schedule(step):
        return mx.array(cfg["learning_rate"]) * mx.minimum(1.0, (mx.array(step) + 1) / max(warmup, 1))

    optimizer = optim.Adam(learning_rate=lr_schedule)
    start, best = 0, {"score": -1.0, "step": None}
    if resume and existing:
        state = runtime.load_checkpoint(existing, model, optimizer)
        start, best = state["step"], state.get("best", best)
        echo(f"resuming {out} from {existing.name}")
    elif overwrite and lead:
        replaced.move_aside()  # everything is checked and loaded: only now does the old run make way
    start = world.sync_start(model, optimizer, start)  # every rank from rank 0's weights and state
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        runtime.atomic_write_json(out / "adapter_config.json", adapter_config(cfg, num_layers))
        runtime.save_config(out, cfg)
        if corpus_split is not None:
            retrieval_reward.write_split(out, corpus_split)
    metrics = runtime.MetricsLog(out / "metrics.jsonl") if lead else distributed.NoMetrics()
    metrics.truncate_after(start)
    metrics.log({"event": "start", "from_step": start, "ranks": world.size, **runtime.environment()})
    echo(
        f"GRPO on {cfg['model']} + {cfg['sft_adapter']} | {runtime.device_name()} | BLAS {runtime.blas_in_use()} | kernels {runtime.cpujit_in_use()} | LoRA rank {cfg['rank']} on {params['keys']} | "
        f"{len(train_q)} prompts, {len(heldout)} held-out | B={cfg['batch_size']} G={cfg['group_size']} beta={cfg['beta']}"
    )
    if world.size > 1:
        share = f"{cfg['batch_size'] // world.size} of every step's {cfg['batch_size']} prompts x {cfg['group_size']}"
        effective = f"{cfg['batch_size'] * cfg['group_size']} completions"
        echo(world.banner(share, effective, cfg["learning_rate"]) + "; held-out evaluation runs on rank 0")

    run = RunCallback(cfg, model, tokenizer, optimizer, out, metrics, heldout, best, start, echo, replaced)
    run.save_best = lambda extra: save_adapter_folder(out / "best", model, cfg, num_layers, extra)
    run.lr_schedule = lr_schedule
    reward_fn = scorer if _takes_truncated(scorer) else (lambda q, t, truncated=False: scorer(q, t))
    with runtime.interruptible(echo, "step") as interrupted:
        run.interrupted = interrupted
        try:
            if start == 0 and heldout and lead:
                how = f"x {cfg['eval_samples']} sampled as QMD samples" if cfg["eval_sampling"] == "qmd" else "greedy"
                echo(f"step    0 | scoring {len(heldout)} held-out queries ({how}; the SFT adapter's baseline) ...")
                run.evaluate(0)  # the GRPO LoRA starts at zero: this is the SFT adapter's score
            step = train_grpo(
                model,
                optimizer,
                train_q,
                cfg,
                tokenizer=tokenizer,
                reward_fn=reward_fn,
                callback=distributed.CollectiveCallback(run, world),
                start=start,
                world=world,
            )
        except TrainingDiverged as exc:
            if lead:
                _plot(out, metrics)
            raise TrainingDiverged(
                f"{exc}: training stopped; the best adapter (step {best['step']}) is kept in {out / 'best'}"
            ) from None

    if lead:
        runtime.save_checkpoint(out, model, optimizer, step, cfg["keep_checkpoints"], {"best": best})
        replaced.commit()
        _plot(out, metrics)
    stopped_early = interrupted["flag"] and step < cfg["steps"] and not run.stop_reason
    if run.stop_reason:
        echo(run.stop_reason)
    elif stopped_early and world.size > 1:
        echo(f"stopped at step {step}; checkpoint saved. Continue with the same mlx.launch command plus --resume")
    elif stopped_early:
        echo(
            f"stopped at step {step}; checkpoint saved. Continue with: python grpo.py --resume --adapter-path {shlex.quote(str(out))}"
        )
    else:
        echo(f"done: {step} steps in {runtime.hms(time.perf_counter() - run.t_start)}")
    if best["step"] is not None:
        echo(f"best held-out score {100 * best['score']:.1f}% at step {best['step']}: {out / 'best'}")
    world.any_rank(False)  # barrier: no rank exits (and has mlx.launch end the others) before rank 0 has saved
    return {"step": step, "best": best, "stopped": run.stop_reason, "interrupted": stopped_early}


class RunCallback(Callback):
    """What a run does after each step: the metrics line, the drift guard, held-out evaluation, checkpoints."""

    def __init__(self, cfg, model, tokenizer, optimizer, out, metrics, heldout, best, start, echo, replaced):
        self.cfg, self.model, self.tokenizer, self.optimizer = cfg, model, tokenizer, optimizer
        self.out, self.metrics, self.heldout, self.best, self.start = out, metrics, heldout, best, start
        self.echo, self.replaced = echo, replaced
        self.formats = deque(maxlen=cfg["drift_window"])
        self.stop_reason, self.interrupted = None, {"flag": False}
        self.t_start = time.perf_counter()

    def should_stop(self) -> bool:
        return self.interrupted["flag"] or self.stop_reason is not None

    def on_step(self, step, groups, stats) -> None:
        import mlx.core as mx
        import numpy as np

        cfg = self.cfg
        rec = step_record(step, groups, stats, mx.get_peak_memory() / 1e9, float(self.lr_schedule(step - 1)))
        eta = (time.perf_counter() - self.t_start) / (step - self.start) * (cfg["steps"] - step)
        rec["eta_s"] = round(eta, 1)
        self.metrics.log(rec)
        self.echo(
            f"step {step:4d}/{cfg['steps']} | reward {rec['reward_mean']:.3f}±{rec['reward_std']:.3f} | "
            f"format {100 * rec['format_valid']:.0f}% | zero-var {100 * rec['zero_variance_groups']:.0f}% | "
            f"kl {rec['kl']:.5f} | clip {100 * rec['clip_ratio']:.1f}% | len {rec['completion_len_mean']:.0f}/{rec['completion_len_max']} "
            f"trunc {100 * rec['truncated']:.0f}% | {rec['tokens_per_sec']:.0f} tok/s | {rec['step_s']:.1f}s | "
            f"{rec['peak_memory_gb']:.2f} GB | ETA {runtime.hms(eta)}"
        )
        self.formats.append(rec["format_valid"])
        if len(self.formats) == self.formats.maxlen and np.mean(self.formats) < cfg["drift_min_format"]:
            self.stop_reason = (
                f"drift guard: format-valid rate over the last {len(self.formats)} steps is {100 * np.mean(self.formats):.0f}% "
                f"(< {100 * cfg['drift_min_format']:.0f}%). Stopping; the best adapter is kept. Try a larger --beta or a lower --learning-rate."
            )
            return
        if self.heldout and (step % cfg["eval_every"] == 0 or step == cfg["steps"]):
            self.evaluate(step)
        if step % cfg["save_every"] == 0 or step == cfg["steps"]:
            runtime.save_checkpoint(
                self.out, self.model, self.optimizer, step, cfg["keep_checkpoints"], {"best": self.best}
            )
            self.replaced.commit()
            _plot(self.out, self.metrics)

    def evaluate(self, step):
        result = heldout_eval(self.model, self.tokenizer, self.heldout, self.cfg)
        s = result["summary"]
        self.metrics.log(
            {
                "step": step,
                "eval_score": s["average"],
                "eval_format_valid": s["format_valid_rate"],
                "eval_issues": s["issues"],  # held-out outputs showing each breakage kind (reward.py)
            }
        )
        improved = s["average"] > self.best["score"]
        if improved:
            self.best.update(score=s["average"], step=step)
            self.save_best({"heldout_score": s["average"], "step": step})
        self.echo(
            f"step {step:4d} | held-out score {100 * s['average']:.1f}% | format-valid {100 * s['format_valid_rate']:.0f}%"
            + (" | new best" if improved else "")
        )
        return s


EVAL_BATCH = 32  # held-out rows decoded together (decode.py); wider batches are cheaper per token on CPU


def eval_settings(cfg) -> dict:
    """How held-out outputs are generated, for reports: sampling, samples per query, token cap."""
    out = {"sampling": cfg["eval_sampling"], "max_tokens": cfg["eval_max_tokens"]}
    if cfg["eval_sampling"] == "qmd":
        out.update(samples=cfg["eval_samples"], seed=cfg["seed"], **QMD_SAMPLING)
    return out


def heldout_eval(model, tokenizer, queries, cfg, progress=None) -> dict:
    """eval.evaluate on [(query, category)] as `eval_sampling` says. With "qmd" each query is sampled
    `eval_samples` times (the rows are the queries repeated, so the summary averages over all samples)
    and the random stream is reset to the run's seed first: every evaluation of a run draws the same
    noise, so scores at different steps differ by the adapter more than by the draw. Rollouts are
    unaffected (train_grpo seeds each step's sampling itself)."""
    import mlx.core as mx

    import eval as ev

    if cfg["eval_sampling"] == "greedy":
        return ev.evaluate(model, tokenizer, queries, cfg["eval_max_tokens"], EVAL_BATCH, progress)
    mx.random.seed(cfg["seed"])
    rows = [qc for qc in queries for _ in range(cfg["eval_samples"])]
    return ev.evaluate(model, tokenizer, rows, cfg["eval_max_tokens"], EVAL_BATCH, progress, **QMD_SAMPLING)


def _tree_add(a, b):
    from mlx.utils import tree_map

    return tree_map(lambda x, y: x + y, a, b)


def _plot(out, metrics):
    runtime.plot_metrics(
        metrics.read(),
        [
            ("reward", ["reward_mean", "eval_score"]),
            ("KL to SFT", ["kl"]),
            ("format-valid", ["format_valid", "eval_format_valid"]),
        ],
        out / "grpo.png",
        title=f"GRPO {out}",
    )


# ----------------------------------------------------------------------------
# CLI


@click.command()
@runtime.config_option("grpo.yaml")
@click.option("--model", help="Base model (default: the SFT adapter's base model).")
@click.option("--sft-adapter", help="SFT adapter folder the GRPO LoRA is trained on top of.")
@click.option("--adapter-path", help="Output folder (adapters, checkpoints, best/, metrics, plot).")
@click.option(
    "--data", help="Training data folder (default: the SFT run's; split as SFT split it, its validation part held out)."
)
@click.option("--steps", type=int, help="GRPO steps (rollout batches).")
@click.option("--batch-size", type=int, help="Prompts per step (B).")
@click.option("--group-size", type=int, help="Completions per prompt (G).")
@click.option("--updates-per-batch", type=int, help="Optimizer steps per rollout batch (>= 1).")
@click.option("--learning-rate", type=float, help="Adam learning rate.")
@click.option("--beta", type=float, help="KL coefficient against the SFT reference (0 disables; drifts).")
@click.option(
    "--clip-eps",
    type=float,
    help="PPO clip range for the probability ratio (below 1; above too unless --epsilon-high).",
)
@click.option("--epsilon-high", type=float, help="Clip range above 1 (default: --clip-eps; 0.28 for dapo).")
@click.option(
    "--loss-type", type=click.Choice(["grpo", "dr_grpo", "dapo", "gspo"]), help="Objective (see the module docstring)."
)
@click.option(
    "--scale-rewards",
    type=click.Choice(["group", "batch", "none"]),
    help="Divide advantages by the group's or the batch's reward std, or not (default group; none for dr_grpo).",
)
@click.option("--min-group-std", type=float, help="Skip groups whose reward std is below this (0: only exact ties).")
@click.option(
    "--mask-truncated-completions/--no-mask-truncated-completions",
    default=None,
    help="Give completions cut at --max-completion-tokens no gradient.",
)
@click.option(
    "--kl-ratio-correction/--no-kl-ratio-correction",
    default=None,
    help="Weight the KL estimate by the detached policy ratio on reused rollouts.",
)
@click.option("--rank", type=int, help="GRPO LoRA rank.")
@click.option("--alpha", type=float, help="GRPO LoRA alpha (scale = alpha / rank).")
@click.option("--temperature", type=float, help="Rollout sampling temperature.")
@click.option("--top-p", type=float, help="Rollout nucleus sampling (1 = off).")
@click.option("--top-k", type=int, help="Rollout top-k sampling (0 = off).")
@click.option("--max-completion-tokens", type=int, help="Cap on tokens per sampled completion.")
@click.option("--eval-every", type=int, help="Steps between held-out evaluations.")
@click.option("--eval-queries", type=int, help="Held-out queries per evaluation.")
@click.option(
    "--eval-sampling",
    type=click.Choice(["qmd", "greedy"]),
    help="Held-out outputs sampled as QMD samples (default) or greedy (also for --eval-only).",
)
@click.option("--eval-samples", type=int, help="Sampled outputs per held-out query (--eval-sampling qmd).")
@click.option("--drift-min-format", type=float, help="Stop when the recent format-valid rate falls below this.")
@click.option("--save-every", type=int, help="Steps between checkpoints.")
@click.option("--seed", type=int, help="Seed for prompt order and sampling.")
@click.option(
    "--reward",
    type=click.Choice(["rubric", "retrieval"]),
    help="rubric: reward.py; retrieval: QMD finds the query's source page in --corpus (retrieval_reward.py).",
)
@click.option("--corpus", help="With --reward retrieval: markdown folder whose own queries GRPO trains on.")
@click.option("--rubric-weight", type=float, help="With --reward retrieval: reward.py's share of the reward.")
@click.option("--resume", is_flag=True, help="Continue the run in --adapter-path from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start over in an --adapter-path that already holds a run.")
@click.option("--eval-only", is_flag=True, help="Only evaluate --adapter on --queries with eval.py's code.")
@click.option(
    "--adapter",
    "eval_adapter",
    type=click.Path(),
    help="With --eval-only: adapter to evaluate (default: <adapter-path>/best, else <adapter-path>).",
)
@click.option("--queries", type=click.Path(), help="With --eval-only: query file (default evals/queries.txt).")
@click.option("--output", "-o", type=click.Path(), help="With --eval-only: write scores as JSON.")
@click.option("-v", "--verbose", is_flag=True, help="With --eval-only: show every output and deduction.")
def cli(config_path, resume, overwrite, eval_only, eval_adapter, queries, output, verbose, **flags):
    """GRPO on top of the SFT adapter (reward: reward.py; KL to the SFT model).

    --resume continues from the run's own config.yaml; flags may change only how long it trains and
    how often it evaluates and saves (and the learning rate and drift guard)."""

    def body():
        cfg = runtime.load_run_config(
            config_path,
            runtime.config_given(),
            GRPO_DEFAULTS,
            flags,
            resume and not eval_only,
            SAFE_RESUME_KEYS,
            schema=GRPO_SCHEMA,
        )
        if eval_only:
            return _eval_only(cfg, eval_adapter, queries, output, verbose)
        return run_grpo(cfg, resume=resume, overwrite=overwrite, echo=click.echo)

    runtime.run_command(body, usage_errors=(data_mod.DataError,))


def _eval_only(cfg, adapter, queries, output, verbose):
    import eval as ev

    if adapter is None:
        out = Path(cfg["adapter_path"])
        adapter = out / "best" if (out / "best" / "adapter_config.json").exists() else out
    model_name = cfg["model"] or runtime.adapter_base_model(adapter)
    model, tokenizer = runtime.load_model(model_name, adapter, fuse=True)  # inference only
    qs = data_mod.read_queries(queries or data_mod.EVAL_QUERIES)
    settings = eval_settings(cfg)
    progress = ev._progress(len(qs) * settings.get("samples", 1), str(adapter), EVAL_BATCH, cfg["eval_max_tokens"])
    result = heldout_eval(model, tokenizer, qs, cfg, progress)
    result["config"] = {"model": model_name, "adapter": str(adapter), **settings}
    click.echo(ev.format_report(result, verbose, title=f"== {adapter} =="))
    if output:
        runtime.atomic_write_json(output, result)
        click.echo(f"wrote {output}")


if __name__ == "__main__":
    cli()
