"""Fault injection: SFT and GRPO on the tiny model killed with SIGKILL at seeded random moments and
in the middle of checkpoint writes, then resumed. Each resume starts from the last complete
checkpoint, the run ends with the same steps (and weights) as an uninterrupted one, and no partial
file is left behind."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest
from conftest import ROOT
from test_train import sft_args, write_data

import runtime

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(cmd, kill_after=None, fault=None, timeout=300):
    """Run cmd; SIGKILL it after `kill_after` seconds, or inject a kill mid-checkpoint (`fault`)."""
    env = dict(ENV)
    if fault:
        env["QMD_FAULT_CHECKPOINT"] = fault
        cmd = [cmd[0], "tests/fault_inject.py", *cmd[1:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
    return proc.returncode, out


def assert_no_partial_files(out):
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name == runtime.ReplacedRun.ASIDE]
    assert not leftovers, leftovers
    for ckpt in (out / "checkpoints").glob("step_*"):
        assert (ckpt / "state.json").exists(), ckpt
        for name in ("adapters.safetensors", "optimizer.safetensors"):
            mx.load(str(ckpt / name))  # complete files


def steps_logged(out, key):
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["step"] for r in recs if key in r]


def ckpt_step(out):
    latest = runtime.latest_checkpoint(out)
    return json.loads((latest / "state.json").read_text())["step"] if latest else 0


def kill_and_resume(cmd, resume_cmd, out, seed, duration, every, total):
    """Kill mid-checkpoint at each write in turn, then at seeded random moments; then finish the run.

    A kill during writes 1-3 of a checkpoint (its adapters, optimizer, state.json) leaves the last
    complete checkpoint where it was; one during write 4 (the run folder's adapters) comes after
    state.json, so that checkpoint is complete. Then a kill in the final checkpoint's state.json write
    (its temp file would stay in the folder for good unless the next run cleans up), and kills at
    seeded random moments."""
    history = []

    def go(command, **kw):
        rc, log = run(command, **kw)
        history.append(log)
        assert rc in (0, -signal.SIGKILL), "\n---\n".join(history)
        assert "Traceback" not in log and "error:" not in log, log
        return rc

    assert go(cmd, fault="2:1") == -signal.SIGKILL  # a fresh run, killed in its second checkpoint
    assert ckpt_step(out) == every
    for write in (3, 2, 1):
        assert go(resume_cmd, fault=f"1:{write}") == -signal.SIGKILL
        assert ckpt_step(out) == every  # resumed from the last complete checkpoint, no further
    assert go(resume_cmd, fault="1:4") == -signal.SIGKILL
    assert ckpt_step(out) == 2 * every
    # in the last checkpoint, the one that stays: nothing may remain of that write
    assert go(resume_cmd, fault=f"{(total - 2 * every) // every}:3") == -signal.SIGKILL
    assert ckpt_step(out) == total - every
    rng = random.Random(seed)
    for _ in range(3):
        go(resume_cmd, kill_after=rng.uniform(0.1, 1.0) * duration)
    rc, log = run(resume_cmd)
    assert rc == 0, "\n---\n".join(history) + log
    return log


def test_sft_survives_sigkill_anywhere(tiny_model_path, tmp_path):
    data = write_data(tmp_path / "data", n=16)
    ref = tmp_path / "ref"
    base = [sys.executable, "train.py", *sft_args(tiny_model_path, data, ref, "--iters", "12")]
    t = time.time()
    rc, log = run(base)
    duration = time.time() - t
    assert rc == 0, log
    out = tmp_path / "killed"
    cmd = [sys.executable, "train.py", *sft_args(tiny_model_path, data, out, "--iters", "12")]
    resume = [*cmd, "--resume"]
    kill_and_resume(cmd, resume, out, seed=1, duration=duration, every=2, total=12)
    assert json.loads((runtime.latest_checkpoint(out) / "state.json").read_text())["step"] == 12
    assert steps_logged(out, "train_loss") == steps_logged(ref, "train_loss") == [2, 4, 6, 8, 10, 12]
    a, b = mx.load(str(ref / "adapters.safetensors")), mx.load(str(out / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(mx.allclose(a[k], b[k], atol=1e-5).item() for k in a)
    assert_no_partial_files(out)


def test_grpo_survives_sigkill_anywhere(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [
        json.dumps(
            {"query": f"auth config {i}", "output": [["lex", f"auth config {i}"], ["vec", f"where is auth config {i}"]]}
        )
        for i in range(40)
    ]
    (data / "d.jsonl").write_text("\n".join(rows) + "\n")
    sft = tmp_path / "sft"
    rc, log = run([sys.executable, "train.py", *sft_args(tiny_model_path, data, sft, "--iters", "2")])
    assert rc == 0, log

    def grpo_cmd(out):
        return [
            sys.executable, "grpo.py", "--sft-adapter", str(sft), "--data", str(data), "--adapter-path", str(out),
            "--steps", "6", "--batch-size", "2", "--group-size", "3", "--max-completion-tokens", "6",
            "--eval-queries", "2", "--eval-every", "2", "--save-every", "1", "--learning-rate", "1e-2",
        ]  # fmt: skip

    ref = tmp_path / "ref"
    t = time.time()
    rc, log = run(grpo_cmd(ref))
    duration = time.time() - t
    assert rc == 0, log
    out = tmp_path / "killed"
    kill_and_resume(grpo_cmd(out), [*grpo_cmd(out), "--resume"], out, seed=2, duration=duration, every=1, total=6)
    assert json.loads((runtime.latest_checkpoint(out) / "state.json").read_text())["step"] == 6
    assert steps_logged(out, "reward_mean") == steps_logged(ref, "reward_mean") == [1, 2, 3, 4, 5, 6]
    a, b = mx.load(str(ref / "adapters.safetensors")), mx.load(str(out / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(mx.allclose(a[k], b[k], atol=1e-5).item() for k in a)
    assert_no_partial_files(out)
