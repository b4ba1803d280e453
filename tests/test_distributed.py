"""Data-parallel SFT over mlx.distributed: 2 ranks on loopback with the ring backend (issue 19).

The ranks run as real processes (mlx.launch, or by hand with the environment mlx.launch sets:
MLX_HOSTFILE + MLX_RANK), on the tiny Qwen3 model, so each test takes tens of seconds on 2 cores.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import ROOT

import train

# A few steps of plain SGD-like training: no dropout (its masks differ by rank by design), constant lr.
COMMON = [
    "--batch-size", "4", "--grad-accumulation-steps", "2", "--max-seq-length", "128",
    "--steps-per-report", "2", "--steps-per-eval", "4", "--save-every", "2",
    "--rank", "4", "--alpha", "8", "--dropout", "0", "--lr-schedule", "constant", "--warmup-steps", "0",
    "--learning-rate", "1e-3",
]  # fmt: skip


def write_split(folder, n_train=24, n_valid=8):
    """train.jsonl + valid.jsonl of varied lengths (so the ranks' shares hold different token counts)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, tag in [("train", n_train, "t"), ("valid", n_valid, "v")]:
        lines = []
        for i in range(n):
            words = " ".join(["settings"] * (i % 5))
            out = [["lex", f"auth config {tag}{i} {words}"], ["vec", f"where is auth config {tag}{i} stored {words}"]]
            lines.append(json.dumps({"query": f"auth config {tag}{i}", "output": out}))
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def free_ports(n=2):
    """A base port p with p .. p+n-1 free (mlx.launch's ring gives rank r port p + r)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65536:
            continue
        try:
            socks = []
            for k in range(n):
                t = socket.socket()
                t.bind(("127.0.0.1", base + k))
                socks.append(t)
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port pair")


def sft_args(model, data, out, *extra):
    return ["sft", "--model", str(model), "--data", str(data), "--adapter-path", str(out), *COMMON, *extra]


def launch(tmp_path, args, timeout=300, script="train.py"):
    """`mlx.launch --hostfile hosts.json --backend ring SCRIPT ...` with 2 local ranks."""
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))
    launcher = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
    cmd = [launcher, "--hostfile", str(hosts), "--backend", "ring", "-p", str(free_ports()),
           "--python", sys.executable, script, *args]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Its own process group: on a timeout the ranks go too (killing mlx.launch alone left them spinning).
    # A stdin that stays open and silent: at EOF (/dev/null) mlx.launch's input loop spins a core.
    quiet, keep_open = os.pipe()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            stdin=quiet, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mlx.launch still running after {timeout} s (a hang)\n{out}\n{err}") from None
    finally:
        os.close(quiet)
        os.close(keep_open)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Group:
    """What iterate_batches reads from mlx.distributed's group: rank() and size()."""

    def __init__(self, rank, size):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


def test_ranks_split_every_batch_and_normalise_by_its_whole_token_count():
    """Rank shares of a training batch are disjoint and together make the single-process batch; each
    carries the whole batch's target count / N, so mean-of-rank-losses is the batch's mean loss."""
    import numpy as np

    dataset = [(list(range(3, 3 + 20 + (i * 7) % 23)), 5 + i % 3) for i in range(30)]
    iterate = train.make_iterate_batches(seed=1)
    single = iterate(dataset, 6, 128, loop=True, comm_group=Group(0, 1))
    shares = [iterate(dataset, 6, 128, loop=True, comm_group=Group(r, 3)) for r in range(3)]
    for _ in range(7):
        whole, lengths, positions, _ = next(single)
        parts = [next(s) for s in shares]
        rows = sorted(tuple(r[r > 0].tolist()) for b in parts for r in np.array(b[0]))
        assert rows == sorted(tuple(r[r > 0].tolist()) for r in np.array(whole))
        targets = int((np.array(positions) >= 0).sum())
        for b in parts:
            assert len(b) == 5 and b[0].shape[0] == 2
            assert abs(b[4].item() * 3 - targets) < 1e-3
    val = list(iterate(dataset, 6, 128, loop=False, comm_group=Group(1, 3)))
    assert len(val) == 5 and all(len(b) == 4 and b[0].shape[0] == 2 for b in val)  # no norm: evaluate() weighs


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(tiny_model_path, tmp_path):
    import mlx.core as mx

    data = write_split(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    single = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, one, "--iters", "4"))
    assert single.exit_code == 0, single.output
    dist = launch(tmp_path, sft_args(tiny_model_path, data, two, "--iters", "4"))
    output = dist.stdout + dist.stderr
    assert dist.returncode == 0, output
    assert "distributed: 2 ranks, each 2 of every batch of 4; effective batch 8" in output
    assert output.count("done: 4 iterations") == 1  # rank 1 prints nothing

    # Same global batch, same data order, loss normalised by the whole batch's tokens: the mean loss
    # and validation loss agree to float32 summation order, and so do the LoRA weights after 2 updates.
    r1, r2 = records(one), records(two)
    train1 = [(r["step"], r["train_loss"]) for r in r1 if "train_loss" in r]
    train2 = [(r["step"], r["train_loss"]) for r in r2 if "train_loss" in r]
    assert [s for s, _ in train1] == [s for s, _ in train2] == [2, 4]
    for (_, a), (_, b) in zip(train1, train2):
        assert abs(a - b) < 1e-4, (train1, train2)
    val1 = [(r["step"], r["val_loss"]) for r in r1 if "val_loss" in r]
    val2 = [(r["step"], r["val_loss"]) for r in r2 if "val_loss" in r]
    assert [s for s, _ in val1] == [s for s, _ in val2] == [0, 4]
    for (_, a), (_, b) in zip(val1, val2):
        assert abs(a - b) < 1e-4, (val1, val2)
    a = mx.load(str(one / "adapters.safetensors"))
    b = mx.load(str(two / "adapters.safetensors"))
    assert a.keys() == b.keys()
    worst = max(mx.abs(a[k] - b[k]).max().item() for k in a)
    assert worst < 1e-5, worst
    # and the weights did move (so the comparison above says something): lora_b starts at zero
    moved = max(mx.abs(a[k]).max().item() for k in a if k.endswith("lora_b"))
    assert moved > 1e-4, moved


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_both_and_the_run_resumes_distributed(tiny_model_path, tmp_path):
    """SIGINT reaches only rank 1: both stop at the same optimizer step, rank 0 saves, exit 130; then
    `--resume` under mlx.launch continues from rank 0's checkpoint (rank 1 gets state by broadcast)."""
    data = write_split(tmp_path / "data")
    out = tmp_path / "run"
    procs, logs = start_ranks(tmp_path, sft_args(tiny_model_path, data, out, "--iters", "400"))
    wait_for_step(logs[0], procs)
    procs[1].send_signal(signal.SIGINT)
    codes = [p.wait(timeout=120) for p in procs]
    text = [log.read_text() for log in logs]
    assert codes == [130, 130], text
    assert "stopped at step" in text[0] and "stopped at step" not in text[1]
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    stopped = json.loads((ckpts[-1] / "state.json").read_text())["step"]
    assert 0 < stopped < 400 and stopped % 2 == 0  # an optimizer-step boundary (accumulation 2)

    resumed = launch(tmp_path, sft_args(tiny_model_path, data, out, "--iters", str(stopped + 4), "--resume"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {out}" in resumed.stdout
    assert f"done: {stopped + 4} iterations" in resumed.stdout


def kill_rank_1_and_expect_a_clear_error(procs, logs):
    """kill -9 rank 1: rank 0 must exit 1 within a minute (no hang), saying what happened and how to go on."""
    procs[1].kill()
    t0 = time.time()
    code = procs[0].wait(timeout=60)
    took = time.time() - t0
    text = logs[0].read_text()
    assert code == 1, text
    assert "rank 0/2:" in text and "another rank stopped" in text and "--resume" in text, text
    assert "Traceback" not in text
    assert took < 60


@pytest.mark.slow
def test_killing_one_rank_ends_the_other_with_a_clear_error(tiny_model_path, tmp_path):
    """kill -9 of rank 1 mid-run: rank 0 fails its next all-reduce and exits 1 with a message that
    says what happened and how to continue, well within a bounded time (no hang)."""
    data = write_split(tmp_path / "data")
    procs, logs = start_ranks(tmp_path, sft_args(tiny_model_path, data, tmp_path / "run", "--iters", "400"))
    wait_for_step(logs[0], procs)
    kill_rank_1_and_expect_a_clear_error(procs, logs)


_STARTED = []  # ranks started by hand: killed after each test, so a failed one leaves none running


@pytest.fixture(autouse=True)
def _kill_leftover_ranks():
    yield
    while _STARTED:
        p = _STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def start_ranks(tmp_path, args, script="train.py"):
    """The two ranks started by hand with the environment mlx.launch gives them, so a test can signal
    or kill one; output to rank0.log / rank1.log."""
    base = free_ports()
    ring = tmp_path / "ring.json"
    ring.write_text(json.dumps([[f"127.0.0.1:{base}"], [f"127.0.0.1:{base + 1}"]]))
    procs, logs = [], []
    for rank in range(2):
        log = tmp_path / f"rank{rank}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLX_HOSTFILE": str(ring), "MLX_RANK": str(rank)}
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
            )
        logs.append(log)
    _STARTED.extend(procs)
    return procs, logs


def wait_for_step(log, procs, timeout=240, marker="| loss"):
    deadline = time.time() + timeout
    while marker not in log.read_text():
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            raise AssertionError(log.read_text())
        time.sleep(0.2)


# ----------------------------------------------------------------------------
# GRPO


def test_gather_shards_puts_every_ranks_groups_back_in_one_process_order():
    """shard() gives rank r the items r, r+N, ...; gather_shards() undoes it on every rank, keeping
    this rank's own objects (their advantages are set in place) and decoding the others'."""
    import distributed

    items = [{"q": i} for i in range(10)]
    w = distributed.World.__new__(distributed.World)
    w.rank, w.size, w.lead = 1, 3, False
    w.gather_json = lambda mine: [mine if r == 1 else [dict(x) for x in items[r::3]] for r in range(3)]
    mine = w.shard(items)
    assert mine == items[1::3]
    back = w.gather_shards(mine, dict, dict)
    assert back == items
    assert all(back[1 + 3 * i] is x for i, x in enumerate(mine))


@pytest.fixture(scope="module")
def grpo_root(tiny_model_path, tmp_path_factory):
    """An SFT adapter (2 iterations on the tiny model) and its data, for GRPO runs."""
    root = tmp_path_factory.mktemp("dist-grpo")
    data = write_split(root / "data")
    result = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, root / "sft", "--iters", "2"))
    assert result.exit_code == 0, result.output
    return root


def grpo_cfg(root, **kw):
    import grpo

    cfg = {**grpo.GRPO_DEFAULTS, "sft_adapter": str(root / "sft"), "data": str(root / "data")}
    cfg.update(batch_size=4, group_size=3, max_completion_tokens=8, eval_every=1000, eval_queries=2, eval_max_tokens=8,
               save_every=1, learning_rate=1e-2, warmup_steps=0, updates_per_batch=1)  # fmt: skip
    cfg["model"] = json.loads((root / "sft" / "adapter_config.json").read_text())["base_model"]
    cfg.update(kw)
    return cfg


@pytest.mark.slow
def test_grpo_steps_on_two_ranks_match_one_process_with_fixed_rollouts(grpo_root, tmp_path):
    """2 steps of 4 prompts x 3 fixed completions, 2 updates each (the second reuses the rollouts, so
    the ratio and clip are live), batch-std advantages (they need every rank's rewards), one rank's
    groups all tied: the same groups, advantages, losses, token counts, gradient norms and LoRA
    weights as one process."""
    import mlx.core as mx

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(grpo_cfg(grpo_root, steps=2, updates_per_batch=2, scale_rewards="batch")))
    script = "tests/grpo_fixed_step.py"
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, script, str(cfg), str(one)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    dist = launch(tmp_path, [str(cfg), str(two)], script=script)
    assert dist.returncode == 0, dist.stdout + dist.stderr

    s1 = json.loads((one / "steps.json").read_text())
    s2 = json.loads((two / "steps.json").read_text())
    assert [s["step"] for s in s1] == [s["step"] for s in s2] == [1, 2]
    for a, b in zip(s1, s2):
        assert a["queries"] == b["queries"] and a["rewards"] == b["rewards"]
        assert np_close(a["advantages"], b["advantages"], 1e-12)
        assert a["tokens"] == b["tokens"] > 0
        for key in ("loss", "kl", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a[key], b[key])
        assert a["clipped"] == b["clipped"] and a["binding"] == b["binding"]
    assert any(s["binding"] > 0 for s in s1)  # the clip bound on the reused rollouts
    assert any(all(x == 0 for x in adv) for adv in s1[0]["advantages"])  # tied groups
    w1 = mx.load(str(one / "adapters.safetensors"))
    w2 = mx.load(str(two / "adapters.safetensors"))
    assert w1.keys() == w2.keys()
    worst = max(mx.abs(w1[k] - w2[k]).max().item() for k in w1)
    moved = max(mx.abs(w1[k]).max().item() for k in w1 if k.endswith("lora_b"))
    print(f"GRPO 2 ranks vs 1: max LoRA weight difference {worst:.2e}, lora_b moved to {moved:.2e}")
    assert worst < 1e-5, worst
    assert moved > 1e-3, moved


def np_close(a, b, tol):
    import numpy as np

    return all(np.allclose(x, y, atol=tol, rtol=0) for x, y in zip(a, b))


def grpo_config_file(root, tmp_path):
    import yaml

    keys = ("model", "sft_adapter", "data", "batch_size", "group_size", "max_completion_tokens", "eval_every",
            "eval_queries", "eval_max_tokens", "save_every", "learning_rate", "warmup_steps", "updates_per_batch")  # fmt: skip
    cfg = grpo_cfg(root, batch_size=2)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump({k: cfg[k] for k in keys}))
    return path


@pytest.mark.slow
def test_grpo_ctrl_c_on_one_rank_stops_both_and_resumes_to_the_same_adapter(grpo_root, tmp_path):
    """SIGINT to rank 1 of a 2-rank grpo.py: both stop after the same step, rank 0 saves, exit 130;
    `--resume` under mlx.launch for one more step gives the adapter of an uninterrupted 2-rank run."""
    import mlx.core as mx

    config = grpo_config_file(grpo_root, tmp_path)
    cut, straight = tmp_path / "cut", tmp_path / "straight"
    base = ["--config", str(config)]
    script = "tests/grpo_length_reward.py"  # grpo.py with a reward that varies on the tiny model's text
    procs, logs = start_ranks(tmp_path, [*base, "--adapter-path", str(cut), "--steps", "400"], script=script)
    wait_for_step(logs[0], procs, marker="| reward")
    procs[1].send_signal(signal.SIGINT)
    codes = [p.wait(timeout=120) for p in procs]
    text = [log.read_text() for log in logs]
    assert codes == [130, 130], text
    assert "stopped at step" in text[0] and "--resume" in text[0] and "stopped at step" not in text[1]
    assert "distributed: 2 ranks, each 1 of every step's 2 prompts x 3; effective batch 6 completions" in text[0]
    stopped = json.loads((sorted((cut / "checkpoints").glob("step_*"))[-1] / "state.json").read_text())["step"]
    assert 0 < stopped < 400

    steps = str(stopped + 1)
    resumed = launch(tmp_path, [*base, "--adapter-path", str(cut), "--steps", steps, "--resume"], script=script)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {cut}" in resumed.stdout and f"done: {steps} steps" in resumed.stdout
    whole = launch(tmp_path, [*base, "--adapter-path", str(straight), "--steps", steps], script=script)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    a = mx.load(str(cut / "adapters.safetensors"))
    b = mx.load(str(straight / "adapters.safetensors"))
    worst = max(mx.abs(a[k] - b[k]).max().item() for k in a)
    assert worst < 1e-6, worst
    assert max(mx.abs(a[k]).max().item() for k in a if k.endswith("lora_b")) > 0


@pytest.mark.slow
def test_killing_one_rank_ends_grpo_on_the_other_with_a_clear_error(grpo_root, tmp_path):
    config = grpo_config_file(grpo_root, tmp_path)
    args = ["--config", str(config), "--adapter-path", str(tmp_path / "run"), "--steps", "400"]
    procs, logs = start_ranks(tmp_path, args, script="grpo.py")
    wait_for_step(logs[0], procs, marker="| reward")
    kill_rank_1_and_expect_a_clear_error(procs, logs)


def test_collective_callback_stops_every_rank_when_one_asks_and_only_rank_0_logs():
    """Rank 0's drift guard (stop) or a Ctrl-C on another rank (interrupted) reaches every rank at the
    same step; the interrupted flag is copied in, so every rank exits 130 the same way."""
    import distributed

    class Inner:
        def __init__(self, stop=False):
            self.interrupted, self.stop, self.steps = {"flag": False}, stop, []

        def should_stop(self):
            return self.interrupted["flag"] or self.stop

        def on_step(self, step, groups, stats):
            self.steps.append(step)

    def world(rank, others):  # others: the (interrupted, stop) the other rank contributes
        w = distributed.World.__new__(distributed.World)
        w.rank, w.size, w.lead = rank, 2, rank == 0
        w.sum_values = lambda mine: [a + b for a, b in zip(mine, others)]
        return w

    quiet = Inner()
    cb = distributed.CollectiveCallback(quiet, world(1, [0, 0]))
    assert not cb.should_stop()
    cb.on_step(1, [], {})
    assert quiet.steps == []  # rank 1 does not log, evaluate or save
    drift = distributed.CollectiveCallback(Inner(), world(1, [0, 1]))  # rank 0's drift guard fired
    assert drift.should_stop() and not drift.inner.interrupted["flag"]
    ctrl_c = distributed.CollectiveCallback(Inner(), world(0, [1, 1]))  # Ctrl-C on rank 1
    assert ctrl_c.should_stop() and ctrl_c.inner.interrupted["flag"]
    ctrl_c.on_step(3, [], {})
    assert ctrl_c.inner.steps == [3]
