"""LoRA supervised fine-tuning on mlx-lm, and machine checks.

    python train.py sft --iters 3500                      # Qwen/Qwen3-1.7B on data/*.jsonl -> adapters/sft
    python train.py sft --config configs/sft-0.6B.yaml    # another preset; any key can be a flag
    python train.py sft --resume                          # continue the run in --adapter-path
    python train.py doctor                                # MLX device, BLAS in use, matmul GFLOP/s

How it trains (all of it mlx-lm's own machinery, customised by passing functions):
  * `mlx_lm.tuner.trainer.train` runs the loop; we pass our `iterate_batches` and a callback.
  * LoRA adapters from `linear_to_lora_layers` on the configured projections, base weights frozen.
  * Examples are tokenized with prompt.encode_example: the loss (mlx-lm's default_loss with per-row
    offsets) covers only the completion - the lex/vec/hyde lines and <|im_end|> - never the prompt
    or Qwen3's empty think block.
  * Batches are buckets of similar length (sorted by token count, ties shuffled each epoch), padded
    to a multiple of 16, so little compute goes to padding; batch order is shuffled per epoch with
    the seed, and the whole order is a pure function of (seed, batch number) so --resume replays it.
  * Under `mlx.launch -n N` (ring, JACCL, MPI) each rank takes every N-th row of each batch; the
    loss is normalised by the whole batch's token count, so mlx-lm's gradient average is exactly the
    single-process gradient of the same batch (see distributed.py for the collective decisions).
  * `unlikelihood: W` (> 0) adds W times a token-level unlikelihood term to the cross-entropy: at each
    target, -log(1 - p) of every word the line already holds, of the earlier same-kind lines' words
    the query lacks and of the word that would go on copying such a line (RepeatAvoider). It teaches
    a small model not to repeat itself when sampled, which cross-entropy never does; the validation
    loss stays the plain cross-entropy.
  * float32 on CPU (BLAS), the model's dtype on GPU.
Safety: a checkpoint (adapter + optimizer state + position) every `save_every` iterations, written
atomically; Ctrl-C finishes the current optimizer step, saves and exits with status 130; a NaN/inf loss stops the
run and keeps the last good adapter. Outputs in --adapter-path: adapters.safetensors,
adapter_config.json (loadable by mlx_lm.load(..., adapter_path=...)), config.yaml (resolved
config), metrics.jsonl, loss.png, checkpoints/.
"""

import runtime

runtime.ensure_fast_blas()  # before MLX is imported: re-executes with OpenBLAS on Linux

import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

import data as data_mod  # noqa: E402
import distributed  # noqa: E402
from prompt import encode_example  # noqa: E402

ALL_PROJECTIONS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]

SFT_DEFAULTS = {
    "model": "Qwen/Qwen3-1.7B",  # Hub id, local MLX/HF folder, GGUF file, or pkg:PACKAGE/FILE.gguf
    "data": "data",  # folder of *.jsonl (split here) or a folder with train.jsonl + valid.jsonl
    "valid_fraction": 0.05,
    "adapter_path": "adapters/sft",
    "iters": 3500,  # micro-batches; optimizer steps = iters / grad_accumulation_steps
    "batch_size": 4,
    "grad_accumulation_steps": 4,
    "learning_rate": 2e-4,
    "lr_schedule": "cosine",  # cosine | constant
    "warmup_steps": 50,  # optimizer steps of linear warm-up
    "min_lr_ratio": 0.1,  # cosine ends at learning_rate * min_lr_ratio
    "weight_decay": 0.0,
    "num_layers": -1,  # LoRA on the last N transformer blocks (-1: all)
    "rank": 16,
    "alpha": 32,  # LoRA scale = alpha / rank
    "dropout": 0.05,
    "lora_keys": ALL_PROJECTIONS,
    "max_seq_length": 512,
    "grad_checkpoint": False,
    # weight of the token-level unlikelihood term (0: plain cross-entropy); see RepeatAvoider
    "unlikelihood": 0.0,
    "seed": 0,
    "steps_per_report": 10,
    "steps_per_eval": 200,
    "val_batches": 25,  # -1: the whole validation set
    "save_every": 100,
    "keep_checkpoints": 2,
}
K = runtime.Key
# Type and allowed range of every key (checked, naming the file or flag, before any model loads).
SFT_SCHEMA = {
    "model": K(str),
    "data": K(str),
    "valid_fraction": K(float, 0, 1, hi_open=True),
    "adapter_path": K(str),
    "iters": K(int, 1),
    "batch_size": K(int, 1),
    "grad_accumulation_steps": K(int, 1),
    "learning_rate": K(float, 0, 1, lo_open=True),
    "lr_schedule": K(str, choices=("cosine", "constant")),
    "warmup_steps": K(int, 0),
    "min_lr_ratio": K(float, 0, 1),
    "weight_decay": K(float, 0),
    "num_layers": K(int, 1, also=(-1,)),
    "rank": K(int, 1),
    "alpha": K(float, 0, lo_open=True),
    "dropout": K(float, 0, 1, hi_open=True),
    "lora_keys": K(list),
    "max_seq_length": K(int, 16),
    "grad_checkpoint": K(bool),
    "unlikelihood": K(float, 0, 100),
    "seed": K(int, 0),
    "steps_per_report": K(int, 1),
    "steps_per_eval": K(int, 1),
    "val_batches": K(int, 1, also=(-1,)),
    "save_every": K(int, 1),
    "keep_checkpoints": K(int, 1),
}
assert SFT_SCHEMA.keys() == SFT_DEFAULTS.keys()
PAD_MULTIPLE = 16


TrainingDiverged = runtime.TrainingDiverged


# ----------------------------------------------------------------------------
# Data


def load_sft_data(cfg):
    """(train examples, valid examples) from cfg["data"] (data.load_split); DataError on any malformed line."""
    return data_mod.load_split(cfg["data"], cfg["valid_fraction"], cfg["seed"])


def tokenize(examples, tokenizer, max_seq_length):
    """[(ids, prompt_len)], dropping (and counting) examples longer than max_seq_length."""
    items, too_long = [], []
    for ex in examples:
        ids, prompt_len = encode_example(tokenizer, ex.query, ex.output)
        if len(ids) > max_seq_length:
            too_long.append(ex.source)
        else:
            items.append((ids, prompt_len))
    return items, too_long


class RepeatAvoider:
    """The tokens each completion token should *not* have been: the candidates of a token-level
    unlikelihood term (Welleck et al. 2019, "Neural text generation with unlikelihood training").

    Why: a small model sampled as QMD samples (temperature 0.7, no presence penalty in effect) repeats
    itself - `lex: Stripe Radar rules rules`, `lex: Obsidian Canvas export export` twice, a hyde that
    loops - and reward.py counts those as breakage. Cross-entropy alone never says "not that word
    again"; the unlikelihood term -log(1 - p(c)) pushes down, at every target position, each candidate
    c the gold token is not:
      * the word tokens already written on the same line (repeated words, looping hyde);
      * the word tokens of earlier lines of the same kind that the prompt (the query) does not contain
        (a lex line that reuses the previous lex line's extra words), and the word that would go on
        copying an earlier same-kind line: the one after each occurrence of the line's last token
        there, or its first word at the start of a line (a line that repeats another, query words
        and all: near-duplicate lines).
    A word token is one whose text has a letter and is not one of reward.STOPWORDS; the gold token is
    never its own candidate, so the data's own repetitions (the query's words on every line) are still
    learned by the cross-entropy. The `kind:` prefix of a line adds no candidates.

    __call__(ids, prompt_len) -> one list of candidate ids per target (ids[prompt_len:]), the most
    recent `limit` of them."""

    def __init__(self, tokenizer, limit: int = 64):
        from reward import STOPWORDS

        self.tokenizer, self.limit, self.stopwords = tokenizer, limit, STOPWORDS
        self._text = {}  # token id -> (decoded text, word or None)

    def text(self, t):
        if t not in self._text:
            raw = self.tokenizer.decode([t])
            low = raw.strip().lower()
            word = low if any(map(str.isalpha, low)) and low not in self.stopwords else None
            self._text[t] = (raw, word)
        return self._text[t]

    def __call__(self, ids, prompt_len):
        prompt_words = {self.text(t)[1] for t in ids[:prompt_len]}
        earlier = {}  # line kind -> {token id: None} of its lines' words the prompt lacks (ordered)
        bodies = {}  # line kind -> the token ids of each of its earlier lines, prefix and newline left out
        line, body, head, kind, out = {}, [], "", None, []
        for t in ids[prompt_len:]:
            cands = {}
            if kind is not None:
                cands.update(earlier.get(kind, {}))
                for prev in bodies.get(kind, []):  # the token that would continue a copy of `prev`
                    nxt = [prev[0]] if not body else [b for a, b in zip(prev, prev[1:]) if a == body[-1]]
                    cands.update((x, None) for x in nxt if self.text(x)[1] is not None)
            cands.update(line)
            cands.pop(t, None)
            out.append(list(cands)[-self.limit :])
            raw, word = self.text(t)
            if "\n" in raw:  # the line ends: its words join its kind's
                if kind is not None:
                    seen = earlier.setdefault(kind, {})
                    seen.update((w, None) for w in line if self.text(w)[1] not in prompt_words)
                    bodies.setdefault(kind, []).append(body)
                line, body, head, kind = {}, [], "", None
            elif kind is None:  # still in the `kind:` prefix
                head += raw
                if ":" in head:
                    kind = head.split(":", 1)[0].strip().lower()
            else:
                body.append(t)
                if word is not None:
                    line.pop(t, None)
                    line[t] = None  # most recent last
        return out


def make_iterate_batches(seed: int, start_batch: int = 0, stop=None, counters=None, accumulation: int = 1, avoid=None):
    """An `iterate_batches` for mlx-lm's trainer: length buckets, deterministic shuffled order.

    Training batch number b (0-based, across epochs) is a pure function of (seed, b): epoch e shuffles
    example order with seed+e, stable-sorts by length (so equal lengths mix), cuts batches, then
    shuffles batch order. Resuming skips the first `start_batch` batches. When `stop()` turns true the
    iterator ends at the next optimizer-step boundary, which ends the trainer's loop cleanly (stop() is
    asked only there: in a distributed run it is a collective).

    With a `comm_group` of N > 1 ranks (mlx-lm passes its world), rank r keeps rows r, r+N, ... of every
    batch (length-sorted, so the shares are balanced) and training batches carry a fifth element: the
    whole batch's target-token count / N, which completion_loss divides by instead of its own count.
    With `avoid` (a RepeatAvoider: the unlikelihood term is on) training batches carry that divisor
    on one rank too, then a sixth element: (B, K, C) candidate ids per target, -1 = none.
    """
    import mlx.core as mx
    import numpy as np

    def epoch_batches(dataset, batch_size, epoch):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(dataset))
        order = sorted(order, key=lambda i: len(dataset[i][0]))  # stable: ties stay shuffled
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if len(batches[-1]) < batch_size:  # top up the last bucket with random examples
            batches[-1] = list(batches[-1]) + list(rng.choice(len(dataset), batch_size - len(batches[-1])))
        return [batches[i] for i in rng.permutation(len(batches))]

    def to_arrays(dataset, idx, max_seq_length, rank=0, size=1, norm=False):
        if size > 1:  # the whole batch's target count (each row trains len - prompt_len tokens)
            total = sum(min(len(dataset[i][0]), max_seq_length) - dataset[i][1] for i in idx)
            idx = idx[rank::size]
        rows = [dataset[i] for i in idx]
        longest = max(len(ids) for ids, _ in rows)
        # inputs are batch[:, :-1]: make that a multiple of PAD_MULTIPLE so few shapes get compiled
        width = min(1 + PAD_MULTIPLE * math.ceil((longest - 1) / PAD_MULTIPLE), max_seq_length)
        arr = np.zeros((len(rows), width), np.int32)
        lengths = []
        for j, (ids, prompt_len) in enumerate(rows):
            n = min(len(ids), width)
            arr[j, :n] = ids[:n]
            # mlx-lm's default_loss keeps target positions t with offset <= t+1 <= length; target t is
            # token t+1, so length = n - 1 ends the loss at the last real token (<|im_end|>). Passing n,
            # as mlx-lm's own iterator does, would also train the first padding token.
            lengths.append((prompt_len, n - 1))
        # The input positions whose next token is a target: prompt_len-1 .. n-2, right-padded with -1
        # to a multiple of PAD_MULTIPLE. completion_loss sends only these through the output layer.
        k = PAD_MULTIPLE * math.ceil(max(n - p + 1 for p, n in lengths) / PAD_MULTIPLE)
        positions = np.full((len(rows), k), -1, np.int32)
        for j, (p, n) in enumerate(lengths):
            positions[j, : n - p + 1] = np.arange(p - 1, n)
        # The tokens every row starts with (BOS, the system prompt QMD sends, the user turn's opening
        # words: ~75 of ~185): completion_loss runs them once, batch 1. Each row keeps at least its last
        # prompt token, the input that predicts its first target.
        same = np.all(arr == arr[:1], axis=0)
        shared = min(int(np.argmin(same)) if not same.all() else width, min(p for p, _ in lengths) - 1)
        if counters is not None:
            counters["tokens"] += sum(n + 1 for _, n in lengths)
            counters["padded"] += arr.size
        batch = (mx.array(arr), mx.array(lengths), mx.array(positions), max(shared, 0))
        if norm and avoid is not None:
            total = total / size if size > 1 else sum(n - p + 1 for p, n in lengths)
            per_row = [avoid(list(ids[: n + 1]), p) for (ids, _), (p, n) in zip(rows, lengths)]
            # candidates per target, padded to a multiple of PAD_MULTIPLE (few compiled shapes)
            c = PAD_MULTIPLE * max(1, math.ceil(max(len(x) for r in per_row for x in r) / PAD_MULTIPLE))
            cands = np.full((len(rows), k, c), -1, np.int32)
            for j, r in enumerate(per_row):
                for i, x in enumerate(r):
                    cands[j, i, : len(x)] = x
            return (*batch, mx.array(total, mx.float32), mx.array(cands))
        return (*batch, mx.array(total / size, mx.float32)) if size > 1 and norm else batch

    def iterate_batches(dataset, batch_size, max_seq_length, loop=False, seed=None, comm_group=None):
        if len(dataset) < batch_size:
            raise ValueError(f"need at least batch_size={batch_size} examples, have {len(dataset)}")
        rank, size = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
        if batch_size % size:
            raise ValueError(f"batch_size={batch_size} must be a multiple of the {size} ranks")
        if not loop:  # validation: one pass in length order, no shuffling (evaluate() sums over ranks)
            order = sorted(range(len(dataset)), key=lambda i: len(dataset[i][0]))
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield to_arrays(dataset, order[i : i + batch_size], max_seq_length, rank, size)
            return
        b, epoch = 0, 0
        while True:
            for idx in epoch_batches(dataset, batch_size, epoch):
                if b >= start_batch:
                    if stop is not None and (b - start_batch) % accumulation == 0 and stop():
                        return
                    if counters is not None:
                        counters["batches"] = b + 1
                    yield to_arrays(dataset, idx, max_seq_length, rank, size, norm=True)
                b += 1
            epoch += 1

    return iterate_batches


def completion_loss(model, batch, lengths, positions, shared: int = 0, norm=None, avoid=None, unlikelihood=0.0):
    """Mean cross-entropy over the completion tokens: mlx-lm's default_loss, computed cheaper.

    batch (B, T+1) token ids; positions (B, K) indices into the T inputs whose next token is a target
    (-1 = padding); shared: how many leading tokens all B rows have in common. Two savings, same value
    and gradients:
      * the shared prefix (BOS + system prompt + the user turn's first words, ~40% of a demo example)
        runs once with batch 1, and the rows' remaining inputs attend to its keys and values
        (runtime.SharedPrompt: broadcast, so gradients flow back to the prefix once per row);
      * the transformer runs on every position (the prompt is context), but only the K target
        positions go through the output layer and the log-softmax: with a 49k-152k vocabulary that
        (B, T, V) step is a large share of a CPU step.
    `lengths` (B, 2) is unused here; it keeps the batch usable with mlx-lm's default_loss. `norm`
    (distributed training) replaces the divisor: the global batch's target count / number of ranks,
    so the ranks' gradient average equals the gradient of the whole batch's mean loss.
    `avoid` (B, K, C) candidate ids per target (-1: none, RepeatAvoider) adds `unlikelihood` times
    the mean over targets of sum_c -log(1 - p(c)); validation batches carry none, so the validation
    loss stays the plain cross-entropy.
    """
    import mlx.core as mx

    inputs, targets = batch[:, :-1], batch[:, 1:]
    valid = positions >= 0
    index = mx.maximum(positions, 0)
    if shared > 0:
        caches = [runtime.SharedPrompt() for _ in model.layers]
        model.model(inputs[:1, :shared], cache=caches)  # (1, shared): keys/values kept in the caches
        for c in caches:
            c.offset = shared  # RoPE position of the rows' first remaining input
        h = model.model(inputs[:, shared:], cache=caches)  # (B, T - shared, hidden)
        hidden = mx.take_along_axis(h, mx.maximum(positions - shared, 0)[..., None], axis=1)  # (B, K, hidden)
    else:
        hidden = mx.take_along_axis(model.model(inputs), index[..., None], axis=1)  # (B, K, hidden)
    logits = runtime.output_logits(model, hidden).astype(mx.float32)  # (B, K, V)
    picked = mx.take_along_axis(targets, index, axis=1)  # (B, K)
    lse = mx.logsumexp(logits, axis=-1, keepdims=True)  # (B, K, 1)
    ce = lse[..., 0] - mx.take_along_axis(logits, picked[..., None], axis=-1)[..., 0]
    ntoks = valid.sum()
    total = mx.where(valid, ce, 0).sum()
    if avoid is not None and unlikelihood > 0:
        p = mx.exp(mx.take_along_axis(logits, mx.maximum(avoid, 0), axis=-1) - lse)  # (B, K, C)
        ul = -mx.log1p(-mx.minimum(p, 1 - 1e-6))  # clipped: a candidate at p ~ 1 costs ~14, not inf
        total = total + unlikelihood * mx.where((avoid >= 0) & valid[..., None], ul, 0).sum()
    return total / (ntoks if norm is None else norm), ntoks


# ----------------------------------------------------------------------------
# Model and optimizer


def build_lora_model(cfg):
    """Load the base model, freeze it and add LoRA layers. Returns (model, tokenizer, num_layers, n_trainable)."""
    model, tokenizer = runtime.load_model(cfg["model"])
    num_layers, n_trainable = runtime.add_lora(model, cfg)
    return model, tokenizer, num_layers, n_trainable


lora_parameters = runtime.lora_parameters


def make_optimizer(cfg, echo=print):
    import mlx.optimizers as optim

    lr = float(cfg["learning_rate"])
    updates = max(1, math.ceil(cfg["iters"] / cfg["grad_accumulation_steps"]))
    warmup = runtime.fit_warmup(int(cfg["warmup_steps"]), updates, "iters / grad_accumulation_steps", echo)
    if cfg["lr_schedule"] == "constant":
        main = lr
    elif cfg["lr_schedule"] == "cosine":
        main = optim.cosine_decay(lr, max(1, updates - warmup), lr * float(cfg["min_lr_ratio"]))
    else:
        raise runtime.ConfigError(f"lr_schedule must be 'cosine' or 'constant', got {cfg['lr_schedule']!r}")
    if warmup > 0:
        main = main if callable(main) else optim.linear_schedule(lr, lr, 1)
        schedule = optim.join_schedules([optim.linear_schedule(lr / warmup, lr, warmup), main], [warmup])
    else:
        schedule = main
    return optim.AdamW(learning_rate=schedule, weight_decay=float(cfg["weight_decay"]))


def adapter_config(cfg, num_layers) -> dict:
    """mlx-lm's adapter_config.json (what mlx_lm.load reads) plus our resolved training config."""
    return runtime.adapter_config(cfg, num_layers)


# Keys that must match for --resume to continue the same run (the rest may change, e.g. iters).
RESUME_KEYS = [
    "model",
    "data",
    "valid_fraction",
    "batch_size",
    "grad_accumulation_steps",
    "rank",
    "alpha",
    "num_layers",
    "lora_keys",
    "max_seq_length",
    "seed",
]


# Keys a --resume may change from the command line: how long to train, how often to report, evaluate
# and save, and the peak learning rate (the way out of a diverged run); the rest come from the run.
SAFE_RESUME_KEYS = [
    "iters",
    "steps_per_report",
    "steps_per_eval",
    "val_batches",
    "save_every",
    "keep_checkpoints",
    "learning_rate",
    "grad_checkpoint",
]


# ----------------------------------------------------------------------------
# The SFT run


# What an SFT run writes into its folder: the only files --overwrite replaces (anything else there stays).
RUN_OUTPUTS = [
    "checkpoints",
    "adapters.safetensors",
    "adapter_config.json",
    "config.yaml",
    "metrics.jsonl",
    "loss.png",
    ".trainer_final.safetensors",
]


def run_sft(cfg: dict, resume: bool = False, overwrite: bool = False, echo=print) -> dict:
    """Run (or resume) SFT. With --overwrite the previous run is moved aside only once data and model
    have loaded, and deleted only once the new run has written its first checkpoint; a failure before
    that puts it back."""
    cfg = runtime.check_config(cfg, SFT_SCHEMA)
    world = distributed.World()
    if world.size > 1:
        cfg = world.broadcast_json(cfg)  # rank 0's: on --resume only its disk holds the run's config.yaml
        if cfg["batch_size"] % world.size:
            raise runtime.ConfigError(
                f"batch_size {cfg['batch_size']} is the global batch and must be a multiple of the {world.size} ranks"
            )
        if not world.lead:  # the other ranks train in step with rank 0 but write and print nothing
            return _run_sft(cfg, resume, overwrite, lambda *a, **k: None, None, world)
    replaced = runtime.ReplacedRun(cfg["adapter_path"], RUN_OUTPUTS)
    try:
        return _run_sft(cfg, resume, overwrite, echo, replaced, world)
    except BaseException:
        if replaced.restore():
            echo(
                f"{cfg['adapter_path']}: the new run stopped before its first checkpoint; the previous run is restored"
            )
        raise


def _run_sft(cfg, resume, overwrite, echo, replaced, world) -> dict:
    import mlx.core as mx
    from mlx_lm.cli_ui import make_console
    from mlx_lm.tuner.trainer import TrainingArgs, train

    out = Path(cfg["adapter_path"])
    lead = world.lead  # only rank 0 reads and writes the run folder; the others get its decisions
    existing = None
    if lead:
        existing = runtime.open_run_folder(
            cfg,
            {"data folder": cfg["data"], "base model": cfg["model"]},
            replaced,
            resume,
            overwrite,
            lambda: json.loads((out / "adapter_config.json").read_text())["train_config"],
            RESUME_KEYS,
            echo,
        )

    # Data first: a broken file fails in a second, before any model is loaded.
    echo(f"reading data from {cfg['data']} ...")
    train_ex, valid_ex = load_sft_data(cfg)
    mx.random.seed(cfg["seed"])
    echo(f"loading {cfg['model']} (a GGUF is converted once, then cached) ...")
    model, tokenizer, num_layers, n_trainable = build_lora_model(cfg)
    echo(f"tokenizing {len(train_ex) + len(valid_ex)} examples ...")
    train_set, too_long = tokenize(train_ex, tokenizer, cfg["max_seq_length"])
    valid_set, too_long_v = tokenize(valid_ex, tokenizer, cfg["max_seq_length"])
    if too_long or too_long_v:
        echo(
            f"skipping {len(too_long) + len(too_long_v)} example(s) longer than max_seq_length={cfg['max_seq_length']}: {', '.join((too_long + too_long_v)[:5])}"
        )
    if len(train_set) < cfg["batch_size"]:
        raise data_mod.DataError(
            [f"{cfg['data']}: only {len(train_set)} training examples; need at least batch_size={cfg['batch_size']}"]
        )
    if valid_set and len(valid_set) < cfg["batch_size"]:
        valid_set = []  # too few to form one validation batch
    mismatch = world.check_same("the tokenized data (examples, tokens, CRC32; train then valid)",
                                distributed.fingerprint(train_set) + distributed.fingerprint(valid_set))  # fmt: skip
    if mismatch:
        raise data_mod.DataError([f"{mismatch}: every machine needs the same --data and --model at the same path"])

    optimizer = make_optimizer(cfg, echo)
    start = 0
    if resume and existing:
        start = runtime.load_checkpoint(existing, model, optimizer)["step"]
        echo(f"resuming {out} from {existing.name}")
    elif resume:
        echo(f"nothing to resume in {out}: starting a new run")
    elif overwrite and lead:
        replaced.move_aside()  # data and model are loaded and checked: only now does the old run make way
    start = world.sync_start(model, optimizer, start)  # every rank starts from rank 0's weights and state
    if world.size > 1:
        mx.random.seed(cfg["seed"] + 1000003 * world.rank)  # LoRA dropout: a different mask on every rank
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        runtime.atomic_write_json(out / "adapter_config.json", adapter_config(cfg, num_layers))
        runtime.save_config(out, cfg)
    metrics = runtime.MetricsLog(out / "metrics.jsonl") if lead else distributed.NoMetrics()
    metrics.truncate_after(start)
    metrics.log({"event": "start", "from_step": start, "ranks": world.size, **runtime.environment()})
    if start >= cfg["iters"]:
        echo(f"{out} already finished {start}/{cfg['iters']} iterations; raise --iters to train further")
        return {"step": start, "adapter_path": str(out)}

    n_tok = sum(len(ids) for ids, _ in train_set)
    echo(
        f"model {cfg['model']} | {runtime.device_name()} | BLAS {runtime.blas_in_use()} | kernels {runtime.cpujit_in_use()} | "
        f"LoRA rank {cfg['rank']} on {num_layers} layers: {n_trainable / 1e6:.2f}M trainable parameters"
    )
    echo(
        f"data {len(train_set)} train / {len(valid_set)} valid examples, {n_tok / len(train_set):.0f} tokens each on average"
    )
    if cfg["unlikelihood"] > 0:
        echo(
            f"loss: cross-entropy + {cfg['unlikelihood']:g} x unlikelihood of repeated words (train loss); "
            "validation loss is the cross-entropy alone"
        )
    if world.size > 1:
        share = f"{cfg['batch_size'] // world.size} of every batch of {cfg['batch_size']}"
        effective = f"{cfg['batch_size'] * cfg['grad_accumulation_steps']} examples"
        echo(world.banner(share, effective, cfg["learning_rate"]) + "; tok/s below is rank 0's share")

    # -- callbacks: progress lines, metrics, validation, checkpoints, NaN guard, Ctrl-C.
    # mlx-lm calls back after every iteration (steps_per_report=1) and never validates itself: its
    # cadence counts from the start of *this* process and validates before the last step, so after a
    # resume its lines read "step 24/25". Here every step number is absolute, and validation runs after
    # the update of steps that are multiples of steps_per_eval and after the last one.
    interrupted = {"flag": False}  # set by the first Ctrl-C (runtime.interruptible)
    counters = {"tokens": 0, "padded": 0, "batches": start}
    clock = {"t0": time.perf_counter(), "last": time.perf_counter(), "tokens": 0, "saved": start, "trained": 0}
    window = {"loss": 0.0, "n": 0}
    last_good = {"step": start}
    val_iterate = make_iterate_batches(cfg["seed"])  # no counters: validation is not training throughput

    def validate(step):
        from mlx_lm.tuner.trainer import evaluate

        t = time.perf_counter()
        n_val = len(valid_set) // cfg["batch_size"]
        n_val = n_val if cfg["val_batches"] == -1 else min(n_val, cfg["val_batches"])
        progress = runtime.Progress(n_val, f"step {step:5d}/{cfg['iters']} | validation batches", echo)
        done = [0]

        def advance():
            done[0] += 1
            if done[0] < n_val:  # the val loss line reports the end
                progress(done[0])

        if step == start:
            echo(f"step {step:5d}/{cfg['iters']} | validation loss over {n_val} batches ...")
        val_loss = evaluate(
            progress_callback=advance,
            model=model,
            dataset=valid_set,
            batch_size=cfg["batch_size"],
            num_batches=cfg["val_batches"],
            max_seq_length=cfg["max_seq_length"],
            loss=completion_loss,
            iterate_batches=val_iterate,
        )
        model.train()
        if not math.isfinite(val_loss):
            raise TrainingDiverged(f"validation loss is {val_loss} at step {step}")
        metrics.log({"step": step, "val_loss": round(val_loss, 5)})
        echo(f"step {step:5d}/{cfg['iters']} | val loss {val_loss:.4f} ({time.perf_counter() - t:.1f}s)")

    class Callback:
        def on_train_loss_report(self, info):
            step = start + info["iteration"]
            loss = info["train_loss"]
            if not math.isfinite(loss):
                raise TrainingDiverged(f"train loss is {loss} at step {step}")
            window["loss"] += loss
            window["n"] += 1
            if step % cfg["steps_per_report"] == 0 or step == cfg["iters"]:
                self.report(step, info)
            elif step == start + 1:  # printed, not logged: how fast this run goes is known after one step
                self.report(step, info, log=False)
            if valid_set and (step % cfg["steps_per_eval"] == 0 or step == cfg["iters"]):
                validate(step)
            if step - clock["saved"] >= cfg["save_every"] and step % cfg["grad_accumulation_steps"] == 0 and lead:
                runtime.save_checkpoint(out, model, optimizer, step, cfg["keep_checkpoints"])
                replaced.commit()
                clock["saved"] = last_good["step"] = step
                _plot(out, metrics)

        def report(self, step, info, log=True):
            loss = window["loss"] / max(window["n"], 1)
            if log:
                window.update(loss=0.0, n=0)
            now = time.perf_counter()
            dt = max(now - clock["last"], 1e-9)
            tps = (counters["tokens"] - clock["tokens"]) / dt
            completion_tps = (info["trained_tokens"] - clock["trained"]) / dt
            if log:
                clock.update(last=now, tokens=counters["tokens"], trained=info["trained_tokens"])
            eta = (now - clock["t0"]) / max(step - start, 1) * (cfg["iters"] - step)
            rec = {
                "step": step,
                "train_loss": round(loss, 5),
                "learning_rate": info["learning_rate"],
                "tokens_per_sec": round(tps, 1),
                "completion_tokens_per_sec": round(completion_tps, 1),
                "trained_tokens": info["trained_tokens"],
                "padding_share": round(1 - counters["tokens"] / max(counters["padded"], 1), 4),
                "peak_memory_gb": round(info["peak_memory"], 3),
                "elapsed_s": round(now - clock["t0"], 1),
                "eta_s": round(eta, 1),
            }
            if log:
                metrics.log(rec)
            echo(
                f"step {step:5d}/{cfg['iters']} | loss {loss:.4f} | lr {info['learning_rate']:.2e} | "
                f"{tps:,.0f} tok/s | peak {info['peak_memory']:.2f} GB | ETA {runtime.hms(eta)}"
            )

    scratch = out / ".trainer_final.safetensors"  # mlx-lm writes its final adapters here; ours are atomic
    args = TrainingArgs(
        batch_size=cfg["batch_size"],
        iters=cfg["iters"] - start,
        steps_per_report=1,  # every iteration comes back to Callback, which keeps the cadence
        steps_per_save=10**12,  # checkpointing is ours (atomic, with optimizer state)
        max_seq_length=cfg["max_seq_length"],
        adapter_file=str(scratch),
        grad_checkpoint=cfg["grad_checkpoint"],
        grad_accumulation_steps=cfg["grad_accumulation_steps"],
    )

    def stop():  # asked at optimizer-step boundaries; a Ctrl-C on any rank stops them all there
        interrupted["flag"] = world.any_rank(interrupted["flag"])
        return interrupted["flag"]

    avoid = RepeatAvoider(tokenizer) if cfg["unlikelihood"] > 0 else None
    iterate = make_iterate_batches(cfg["seed"], start, stop, counters, cfg["grad_accumulation_steps"], avoid)
    loss_fn = (
        functools.partial(completion_loss, unlikelihood=cfg["unlikelihood"]) if avoid is not None else completion_loss
    )
    make_console().quiet = True  # our progress line replaces mlx-lm's console UI
    model.train()
    with runtime.interruptible(echo, "optimizer step", interrupted):
        try:
            if valid_set and start == 0:
                validate(0)  # the untrained adapter's loss: the baseline of the curve
            train(
                model,
                optimizer,
                train_set,
                None,  # validation is ours (absolute step numbers)
                args,
                loss=loss_fn,
                iterate_batches=iterate,
                training_callback=Callback(),
            )
        except TrainingDiverged as exc:
            if lead:
                _plot(out, metrics)
            raise TrainingDiverged(
                f"{exc}: training stopped. The last good adapter (step {last_good['step']}) is kept in {out}/adapters.safetensors. "
                "Try a lower --learning-rate."
            ) from None
        finally:
            make_console().quiet = False
            scratch.unlink(missing_ok=True)

    step = counters["batches"]
    if lead:
        runtime.save_checkpoint(out, model, optimizer, step, cfg["keep_checkpoints"])
        replaced.commit()
        _plot(out, metrics)
    stopped = interrupted["flag"] and step < cfg["iters"]
    if stopped and world.size > 1:
        echo(f"stopped at step {step}; checkpoint saved. Continue with the same mlx.launch command plus --resume")
    elif stopped:
        echo(
            f"stopped at step {step}; checkpoint saved. Continue with: python train.py sft --resume --adapter-path {shlex.quote(str(out))}"
        )
    else:
        echo(f"done: {step} iterations in {runtime.hms(time.perf_counter() - clock['t0'])}; adapter in {out}")
    # Barrier: no rank exits before rank 0 has saved and said so (mlx.launch kills the other ranks as
    # soon as one exits non-zero, and 130 counts: it cut rank 0 off mid-message in a test).
    world.any_rank(False)
    return {"step": step, "adapter_path": str(out), "interrupted": stopped}


def _plot(out, metrics):
    runtime.plot_metrics(
        metrics.read(),
        [
            ("loss", ["train_loss", "val_loss"]),
            ("learning rate", ["learning_rate"]),
            ("throughput (tok/s)", ["tokens_per_sec"]),
        ],
        out / "loss.png",
        title=f"SFT {out}",
    )


# ----------------------------------------------------------------------------
# CLI


@click.group()
def cli():
    """Train query-expansion models for QMD on MLX."""


@cli.command()
@runtime.config_option("sft.yaml")
@click.option(
    "--model", help="Base model: Hub id (Qwen/Qwen3-1.7B), local MLX/HF folder, GGUF file, or pkg:PACKAGE/FILE.gguf."
)
@click.option(
    "--data",
    help="Folder of *.jsonl training files, or a folder with train.jsonl and valid.jsonl (from data.py split).",
)
@click.option("--adapter-path", help="Output folder for adapters, checkpoints, metrics and plots.")
@click.option("--iters", type=int, help="Training iterations (micro-batches).")
@click.option("--batch-size", type=int, help="Examples per micro-batch.")
@click.option("--grad-accumulation-steps", type=int, help="Micro-batches per optimizer step.")
@click.option("--learning-rate", type=float, help="Peak learning rate.")
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), help="Learning-rate schedule after warm-up.")
@click.option("--warmup-steps", type=int, help="Optimizer steps of linear warm-up.")
@click.option("--num-layers", type=int, help="Add LoRA to the last N blocks (-1: all).")
@click.option("--rank", type=int, help="LoRA rank.")
@click.option("--alpha", type=float, help="LoRA alpha (scale = alpha / rank).")
@click.option("--dropout", type=float, help="LoRA dropout.")
@click.option("--max-seq-length", type=int, help="Longest example in tokens; longer ones are skipped and reported.")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None, help="Recompute activations to save memory.")
@click.option(
    "--unlikelihood",
    type=float,
    help="Weight of the unlikelihood term against repeated words (0: plain cross-entropy).",
)
@click.option("--seed", type=int, help="Seed for the data split, batch order and LoRA init.")
@click.option("--steps-per-report", type=int, help="Iterations between progress lines.")
@click.option("--steps-per-eval", type=int, help="Iterations between validation losses.")
@click.option("--save-every", type=int, help="Iterations between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue the run in --adapter-path from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start over in an --adapter-path that already holds a run.")
def sft(config_path, resume, overwrite, **flags):
    """LoRA supervised fine-tuning on mlx-lm (prompt masked, length-bucketed batches).

    --resume continues from the run's own config.yaml; flags may change only how long it trains and
    how often it reports, evaluates and saves (and the learning rate)."""

    def body():
        cfg = runtime.load_run_config(
            config_path, runtime.config_given(), SFT_DEFAULTS, flags, resume, SAFE_RESUME_KEYS, schema=SFT_SCHEMA
        )
        return run_sft(cfg, resume=resume, overwrite=overwrite, echo=click.echo)

    runtime.run_command(body, usage_errors=(data_mod.DataError,))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts and tests).")
@click.option("--quick", is_flag=True, help="Smaller matmul (512) and no bfloat16 measurement: about a second.")
def doctor(as_json, quick):
    """Print the MLX device, the BLAS library in use and measured matmul GFLOP/s.

    On Linux CPU the scripts preload OpenBLAS automatically; a report that says "bundled reference BLAS"
    means libopenblas0-pthread is missing (`make setup` installs it).
    """
    report = runtime.doctor_report(quick=quick)
    if as_json:
        click.echo(json.dumps(report))
        return
    for key, value in report.items():
        click.echo(f"{key:24} {value}")


if __name__ == "__main__":
    cli()
