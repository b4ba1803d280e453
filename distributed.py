"""Data-parallel plumbing over mlx.distributed (`mlx.launch -n N --backend ring|jaccl|mpi ...`).

MLX does the transport; this module holds the few collective decisions a training script needs so
that every rank takes the same branch at the same step and none waits forever on a peer:

  * `World`: rank/size of the group mlx.launch set up (a single process is a world of one, and every
    helper below is then a no-op that costs nothing);
  * `broadcast_tree` / `broadcast_json`: rank 0's arrays or config to every rank (a resumed run's
    checkpoint exists only on rank 0's disk; the LoRA init is made identical on every machine);
  * `any_rank`: a flag that is true everywhere when it is true on one rank (Ctrl-C on one Mac stops
    them all at the same optimizer step);
  * `check_same`: fail on every rank at once when the ranks read different data;
  * `sync_start`: rank 0's step, trainable weights and optimizer state on every rank (a new run or
    a --resume);
  * GRPO's pieces: `shard` (this rank's prompts of a step), `gather_shards` (every rank's groups, in
    the order one process would have them), `sum_tree` (the gradients, one all-reduce), `sum_values`
    (token counts and loss sums) and `CollectiveCallback` (stop decisions taken together, only rank
    0's callback logs, evaluates and saves);
  * `lost_peer`: tells a dead peer's error (the ring backend raises "[ring] connection to a peer was
    lost" at the next collective) from any other RuntimeError.
Only rank 0 writes files and prints; the other ranks print errors only, prefixed with their rank.
"""

import json
import os
import zlib


class World:
    def __init__(self):
        import mlx.core as mx

        self.group = mx.distributed.init()
        self.rank = self.group.rank()
        self.size = self.group.size()
        self.lead = self.rank == 0

    def all_sum(self, x):
        import mlx.core as mx

        return mx.distributed.all_sum(x, group=self.group, stream=mx.cpu)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank iff it is true on at least one (a collective: every rank must call it)."""
        if self.size == 1:
            return bool(flag)
        import mlx.core as mx

        return self.all_sum(mx.array(1 if flag else 0, mx.int32)).item() > 0

    def broadcast_tree(self, tree):
        """Rank 0's tree of arrays on every rank: its structure, shapes and dtypes (sent first, as
        JSON), then its values (the others send zeros; all_sum adds them up), leaf by leaf in sorted
        key order.

        The structure is rank 0's, not each rank's own: an optimizer state loaded from a checkpoint
        on rank 0 can lack entries a freshly initialised one has (a GRPO run whose steps all tied
        never created Adam moments), and an all-reduce paired with a different array, or missing on
        one rank, would hang."""
        if self.size == 1:
            return tree
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten

        flat = dict(tree_flatten(tree)) if self.lead else {}
        spec = self.broadcast_json(
            [[k, list(v.shape), str(v.dtype).split(".")[-1]] if isinstance(v, mx.array) else [k, None, v]
             for k, v in flat.items()]
        )  # fmt: skip

        def one(key, shape, dtype):
            dtype = getattr(mx, dtype)
            mine = flat[key] if self.lead else mx.zeros(shape, dtype)
            if dtype in (mx.uint64, mx.int64):  # not every backend sums 64-bit integers: go through int32
                return self.all_sum(mine.astype(mx.int32)).astype(dtype)
            return self.all_sum(mine)

        summed = {k: one(k, shape, v) for k, shape, v in sorted(spec) if shape is not None}
        mx.eval(list(summed.values()))
        return tree_unflatten([(k, summed[k] if shape is not None else v) for k, shape, v in spec])

    def broadcast_json(self, obj):
        """Rank 0's JSON-serialisable value on every rank (two small all-reduces)."""
        if self.size == 1:
            return obj
        import mlx.core as mx
        import numpy as np

        raw = json.dumps(obj, sort_keys=True).encode() if self.lead else b""
        n = self.all_sum(mx.array(len(raw), mx.int32)).item()
        buf = np.zeros(n, np.int32)
        if self.lead:
            buf[:] = np.frombuffer(raw, np.uint8)
        got = np.array(self.all_sum(mx.array(buf))).astype(np.uint8).tobytes()
        return json.loads(got.decode())

    def check_same(self, what: str, values: list) -> str | None:
        """A message naming the ranks whose `values` (ints) differ from rank 0's, else None; the same
        answer on every rank, so they all stop together."""
        if self.size == 1:
            return None
        import mlx.core as mx

        mine = [int(v) & 0x7FFFFFFF for v in values]
        table = mx.distributed.all_gather(mx.array([mine], mx.int32), group=self.group, stream=mx.cpu).tolist()
        bad = [r for r, row in enumerate(table) if row != table[0]]
        if not bad:
            return None
        return f"{what} differs between ranks: rank 0 has {table[0]}, " + ", ".join(
            f"rank {r} has {table[r]}" for r in bad
        )

    # -- data-parallel GRPO (grpo.train_grpo's world=): the step's B prompts are split by rank

    def shard(self, items: list) -> list:
        """This rank's share of a step's items: rows r, r+N, r+2N, ... (all of them in one process)."""
        return list(items) if self.size == 1 else list(items)[self.rank :: self.size]

    def gather_json(self, obj) -> list:
        """Every rank's JSON-serialisable value, in rank order, on every rank (two small all-gathers)."""
        if self.size == 1:
            return [obj]
        import mlx.core as mx
        import numpy as np

        raw = np.frombuffer(json.dumps(obj).encode(), np.uint8).astype(np.int32)
        sizes = mx.distributed.all_gather(mx.array([len(raw)], mx.int32), group=self.group, stream=mx.cpu).tolist()
        buf = np.zeros(max(sizes), np.int32)
        buf[: len(raw)] = raw
        rows = np.array(mx.distributed.all_gather(mx.array(buf[None]), group=self.group, stream=mx.cpu))
        return [json.loads(rows[r, : sizes[r]].astype(np.uint8).tobytes().decode()) for r in range(self.size)]

    def gather_shards(self, local: list, encode, decode) -> list:
        """The whole list that `shard` split, on every rank: item i of rank r goes back to place r + i*N.
        This rank's own items stay the same objects; the others are decode(encode(item))."""
        if self.size == 1:
            return list(local)
        shares = self.gather_json([encode(x) for x in local])
        out = [None] * sum(len(s) for s in shares)
        for r, share in enumerate(shares):
            for i, item in enumerate(share):
                out[r + i * self.size] = local[i] if r == self.rank else decode(item)
        return out

    def sum_values(self, values: list) -> list:
        """Element-wise sum over ranks of a few numbers, in float32 (counts are exact below 2**24); a
        NaN on any rank is a NaN everywhere, so a divergence check on the result stops every rank at
        the same step."""
        if self.size == 1:
            return list(values)
        import mlx.core as mx

        return self.all_sum(mx.array([float(v) for v in values], mx.float32)).tolist()

    def sum_tree(self, tree):
        """The leaf-wise sum over ranks of a tree of float arrays in one all-reduce (the leaves are
        flattened into one buffer in sorted key order, then split back)."""
        if self.size == 1:
            return tree
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten

        flat = sorted(tree_flatten(tree), key=lambda kv: kv[0])
        buf = self.all_sum(mx.concatenate([v.reshape(-1) for _, v in flat]))
        out, i = [], 0
        for k, v in flat:
            out.append((k, buf[i : i + v.size].reshape(v.shape).astype(v.dtype)))
            i += v.size
        return tree_unflatten(out)

    def sync_start(self, model, optimizer, start: int) -> int:
        """Every rank starts from rank 0's step, trainable weights and (on a resume) optimizer state:
        only rank 0 reads the run folder, and no rank relies on drawing the same random LoRA init."""
        if self.size == 1:
            return start
        start = self.broadcast_json(start)
        model.update(self.broadcast_tree(model.trainable_parameters()))
        if start > 0:
            if not self.lead:
                optimizer.init(model.trainable_parameters())
            optimizer.state = self.broadcast_tree(optimizer.state)
        return start

    def banner(self, share: str, effective: str, learning_rate: float) -> str:
        return (
            f"distributed: {self.size} ranks, each {share}; effective batch {effective} per optimizer step, "
            f"learning rate {learning_rate:g} as configured (the same run as one process)"
        )


class CollectiveCallback:
    """A training loop's callback (should_stop / on_step) under mlx.launch: the stop decision is taken
    by all ranks together, and only rank 0's callback logs, evaluates and saves.

    `inner` is the run's own callback on every rank (its `interrupted` dict is set by that rank's
    Ctrl-C handler, its should_stop() also covers rank 0's drift guard and early stop). A Ctrl-C on
    any rank marks every rank interrupted, so all of them save-and-exit-130 the same way."""

    def __init__(self, inner, world):
        self.inner, self.world = inner, world

    def should_stop(self) -> bool:
        own = self.inner.should_stop()
        if self.world.size == 1:
            return own
        interrupted, stop = self.world.sum_values([bool(self.inner.interrupted["flag"]), own])
        if interrupted:
            self.inner.interrupted["flag"] = True
        return stop > 0

    def on_step(self, step, groups, stats) -> None:
        if self.world.lead:
            self.inner.on_step(step, groups, stats)


class NoMetrics:
    """The metrics log of ranks other than 0: they write nothing."""

    def log(self, record):
        pass

    def truncate_after(self, step):
        pass

    def read(self):
        return []


def fingerprint(items) -> list:
    """Cheap identity of a tokenized data set: count, total tokens, CRC32 of the token ids."""
    crc = 0
    total = 0
    for ids, prompt_len in items:
        crc = zlib.crc32(bytes(str(prompt_len), "ascii") + b":" + b",".join(b"%d" % t for t in ids), crc)
        total += len(ids)
    return [len(items), total, crc]


def rank_prefix() -> str:
    """`rank R/N: ` under mlx.launch with N > 1 (so an error names the machine it came from), else ""."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return ""
    group = mx.distributed.init()
    return f"rank {group.rank()}/{group.size()}: " if group.size() > 1 else ""


def fingerprint_texts(texts) -> list:
    """Cheap identity of a list of strings (GRPO's prompts): count, CRC32 of their UTF-8 bytes."""
    crc = 0
    for t in texts:
        crc = zlib.crc32(t.encode() + b"\n", crc)
    return [len(texts), crc]


def file_crc(path, chunk: int = 1 << 24) -> int:
    """CRC32 of a file's bytes (0 when it is missing): the SFT adapter every rank fuses must be the same."""
    if not os.path.exists(path):
        return 0
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def lost_peer_message(err: BaseException) -> str:
    return (
        f"{err}: another rank stopped or the link between the machines failed, so this one stops too. Its "
        "own error (if any) is above; the last checkpoint is in the run folder on rank 0: start the same "
        "mlx.launch command with --resume to continue."
    )


def lost_peer(err: BaseException) -> bool:
    """A collective failed because another rank died or the link went down (ring, JACCL, MPI, NCCL)."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "peer" in text or "[ring]" in text or "[jaccl]" in text or "[mpi]" in text or "[nccl]" in text
    )
