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
  * `lost_peer`: tells a dead peer's error (the ring backend raises "[ring] connection to a peer was
    lost" at the next collective) from any other RuntimeError.
Only rank 0 writes files and prints; the other ranks print errors only, prefixed with their rank.
"""

import json
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
        """Rank 0's arrays, same structure on every rank (others send zeros; all_sum adds them up).

        The leaves go in sorted key order: dicts built differently (an optimizer state loaded from a
        checkpoint on rank 0, freshly initialised elsewhere) list the same keys in different orders,
        and pairing a rank's array with another's of a different size would hang the all-reduce."""
        if self.size == 1:
            return tree
        import mlx.core as mx
        from mlx.utils import tree_flatten, tree_unflatten

        def one(x):
            if not isinstance(x, mx.array):
                return x
            mine = x if self.lead else mx.zeros_like(x)
            if x.dtype in (mx.uint64, mx.int64):  # not every backend sums 64-bit integers: go through int32
                return self.all_sum(mine.astype(mx.int32)).astype(x.dtype)
            return self.all_sum(mine)

        flat = tree_flatten(tree)
        summed = {k: one(v) for k, v in sorted(flat, key=lambda kv: kv[0])}
        mx.eval(list(summed.values()))
        return tree_unflatten([(k, summed[k]) for k, _ in flat])

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
