"""train.py sft on the tiny offline Qwen3: prompt mask, batches, checkpoints, resume, Ctrl-C, NaN, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import ROOT

import prompt
import train
from prompt import encode_example

PAIRS = [("lex", "auth config file"), ("vec", "where is the auth configuration stored")]


def write_data(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        q = f"auth config number {i}"
        out = [
            ["lex", f"auth config {i}"],
            ["vec", f"where is auth config {i} stored"],
            ["hyde", "Auth lives in config/auth.yml."],
        ]
        lines.append(json.dumps({"query": q, "output": out}))
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def sft_args(model, data, out, *extra):
    return [
        "sft", "--model", str(model), "--data", str(data), "--adapter-path", str(out),
        "--batch-size", "2", "--grad-accumulation-steps", "1", "--max-seq-length", "128",
        "--steps-per-report", "2", "--steps-per-eval", "1000", "--save-every", "2",
        "--rank", "4", "--alpha", "8", "--dropout", "0", "--lr-schedule", "constant", "--warmup-steps", "0",
        "--learning-rate", "1e-3", *extra,
    ]  # fmt: skip


def test_loss_mask_covers_exactly_the_completion(qwen_tokenizer):
    """The mask mlx-lm's default_loss builds from our (offset, length) rows selects the target lines
    and <|im_end|> - not the prompt (system and user turns)."""
    import mlx.core as mx

    ids, prompt_len = encode_example(qwen_tokenizer, "auth config", PAIRS)
    it = train.make_iterate_batches(seed=0)
    batch, lengths, positions, shared = next(it([(ids, prompt_len)] * 2, 2, 512, loop=True))
    assert batch.shape[1] - 1 == 16 * -(-(len(ids) - 1) // 16)  # inputs padded to a multiple of 16
    targets = batch[:, 1:]
    steps = mx.arange(1, targets.shape[1] + 1)
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps <= lengths[:, 1:])  # as in mlx_lm default_loss
    picked = [int(t) for t, m in zip(targets[0].tolist(), mask[0].tolist()) if m]
    assert picked == ids[prompt_len:]
    assert (
        qwen_tokenizer.decode(picked)
        == "lex: auth config file\nvec: where is the auth configuration stored\n<|im_end|>"
    )
    assert "<think>" not in qwen_tokenizer.decode(ids) and prompt.SYSTEM_PROMPT in qwen_tokenizer.decode(
        ids[:prompt_len]
    )
    # completion_loss's positions select the same targets
    picked_too = [int(targets[0, p]) for p in positions[0].tolist() if p >= 0]
    assert picked_too == picked


def test_completion_loss_equals_mlx_lm_default_loss(tiny_model):
    """Same value and gradients as mlx-lm's loss on a mixed-length batch, with the output layer
    applied only at target positions."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.trainer import default_loss

    model, tok = tiny_model
    rows = [encode_example(tok, q, PAIRS) for q in ["auth config", "a much longer query about kubernetes ingress tls"]]
    batch, lengths, positions, shared = next(train.make_iterate_batches(seed=0)(rows, 2, 512, loop=True))
    # the rows share BOS, the system prompt and "<|im_start|>user\n/no_think Expand this search query:"
    assert tok.decode(batch[0, :shared].tolist()).endswith("Expand this search query:") and shared > 70
    (ref, n_ref), g_ref = nn.value_and_grad(model, default_loss)(model, batch, lengths)
    for s in (shared, 0):  # the shared prefix run once, and the plain path
        (ours, n_ours), g_ours = nn.value_and_grad(model, train.completion_loss)(model, batch, lengths, positions, s)
        assert int(n_ours) == int(n_ref) == sum(len(ids) - p for ids, p in rows)
        assert abs(float(ours) - float(ref)) < 1e-4 * abs(float(ref))
        for (name, a), (_, b) in zip(tree_flatten(g_ours), tree_flatten(g_ref)):
            assert mx.allclose(a, b, atol=1e-5, rtol=1e-3), (s, name)


def test_repeat_avoider_names_the_words_a_line_already_has(qwen_tokenizer):
    """Candidates of the unlikelihood term: the line's own earlier words, the earlier same-kind lines'
    words the query lacks and the word that would copy such a line on; never stop words, the gold
    token or anything in the `kind:` prefix."""
    tok = qwen_tokenizer
    pairs = [("lex", "radar rules payment"), ("lex", "radar fraud payment"), ("vec", "the payment rules")]
    ids, p = encode_example(tok, "radar rules", pairs)
    cands = train.RepeatAvoider(tok)(ids, p)
    assert len(cands) == len(ids) - p
    words = lambda c: {tok.decode([t]).strip() for t in c}  # noqa: E731
    # walk the completion's targets: (text so far, candidates of the next target)
    seen, at = "", {}
    for t, c in zip(ids[p:], cands):
        at.setdefault(seen, (tok.decode([t]), words(c)))
        seen += tok.decode([t])
    assert at[""] == ("lex", set()) and at["lex"][1] == set()  # the prefix: nothing
    assert at["lex: radar rules"][1] == {"radar", "rules"}  # ' payment' is new here
    # line 2, after "radar" (gold: "fraud"): "payment" carried over (line 1's word the query lacks),
    # "radar" (this line's own) and "rules", the word that would copy line 1 on
    line2 = "lex: radar rules payment\nlex: radar"
    assert at[line2] == (" fraud", {"payment", "radar", "rules"})
    # after "radar fraud": no copy goes on from "fraud"; the query's "rules" is not carried over
    assert at[line2 + " fraud"][1] == {"payment", "radar", "fraud"} - {at[line2 + " fraud"][0].strip()}
    vec = "lex: radar rules payment\nlex: radar fraud payment\nvec: the"
    assert at[vec][1] == set()  # other kinds' words do not count; 'the' is a stop word
    assert at[vec + " payment"][1] == {"payment"} - {at[vec + " payment"][0].strip()}


def test_unlikelihood_term_equals_its_definition_and_leaves_validation_alone(tiny_model, qwen_tokenizer):
    """With RepeatAvoider, training batches carry candidates (B, K, C), C a multiple of 16; the loss adds
    w * mean over targets of sum_c -log(1 - p(c)), checked against a plain numpy softmax of the full
    forward pass; validation batches have none, so their loss is the cross-entropy."""
    import mlx.core as mx
    import numpy as np

    model, tok = tiny_model
    rows = [encode_example(tok, q, PAIRS + [("lex", f"{q} config config")]) for q in ["auth config", "tls ingress"]]
    make = train.make_iterate_batches(seed=0, avoid=train.RepeatAvoider(tok))
    batch, lengths, positions, shared, norm, avoid = next(make(rows, 2, 512, loop=True))
    assert avoid.shape[:2] == positions.shape and avoid.shape[2] % 16 == 0 and int(norm) == int((positions >= 0).sum())
    assert len(next(make(rows, 2, 512, loop=False))) == 4  # validation: plain batches
    ce, n = train.completion_loss(model, batch, lengths, positions, shared, norm)
    both, _ = train.completion_loss(model, batch, lengths, positions, shared, norm, avoid, unlikelihood=0.5)
    logits = np.array(model(batch[:, :-1]).astype(mx.float32))  # (B, T, V)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ul, counted = 0.0, 0
    for b in range(2):
        for k, pos in enumerate(positions[b].tolist()):
            for c in avoid[b, k].tolist():
                if pos >= 0 and c >= 0:
                    ul -= np.log1p(-probs[b, pos, c])
                    counted += 1
    assert counted > 20  # the doubled 'config' and the lines' shared words give candidates
    assert abs((float(both) - float(ce)) - 0.5 * ul / int(n)) < 1e-4 * max(1.0, ul / int(n))


def test_positions_cover_every_target_at_padding_boundaries():
    """Completions of 15-17 and 31-33 targets straddle the multiple-of-16 padding of positions."""
    for targets in [1, 15, 16, 17, 31, 32, 33]:
        prompt_len = 5
        ids = list(range(1, prompt_len + targets + 1))
        batch, lengths, positions, _ = next(
            train.make_iterate_batches(seed=0)([(ids, prompt_len)] * 2, 2, 512, loop=True)
        )
        got = [p for p in positions[0].tolist() if p >= 0]
        assert got == list(range(prompt_len - 1, prompt_len - 1 + targets)), targets
        assert positions.shape[1] % 16 == 0


def test_batches_are_length_buckets_and_order_is_a_function_of_seed():
    data = [([1] * n, 1) for n in [5, 50, 6, 51, 7, 52, 8, 53]]
    it = train.make_iterate_batches(seed=1)
    batches = [b for _, b in zip(range(8), it(data, 2, 512, loop=True))]
    for _arr, lengths, *_ in batches:
        lens = [n for _, n in lengths.tolist()]
        assert max(lens) - min(lens) <= 2  # similar lengths together
    again = [b for _, b in zip(range(8), train.make_iterate_batches(seed=1)(data, 2, 512, loop=True))]
    assert [a.tolist() for a, *_ in batches] == [a.tolist() for a, *_ in again]
    resumed = [b for _, b in zip(range(5), train.make_iterate_batches(seed=1, start_batch=3)(data, 2, 512, loop=True))]
    assert [a.tolist() for a, *_ in resumed] == [a.tolist() for a, *_ in batches[3:]]


@pytest.mark.slow
def test_sft_trains_saves_and_resumes_exactly(tiny_model_path, tmp_path):
    import mlx.core as mx

    data = write_data(tmp_path / "data")
    runner = CliRunner()
    full = runner.invoke(train.cli, sft_args(tiny_model_path, data, tmp_path / "full", "--iters", "4"))
    assert full.exit_code == 0, full.output
    assert "step     2/4 | loss" in full.output and "tok/s" in full.output and "ETA" in full.output
    out = tmp_path / "full"
    for name in ["adapters.safetensors", "adapter_config.json", "config.yaml", "metrics.jsonl", "loss.png"]:
        assert (out / name).exists(), name
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 4
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [2, 4]

    # the adapter loads with mlx-lm's own loader
    from mlx_lm import load

    load(str(tiny_model_path), adapter_path=str(out))

    # a run folder that holds a run is not silently overwritten
    again = runner.invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "4"))
    assert again.exit_code == 2 and "--resume" in again.output

    # 2 iterations, then --resume to 4: same weights as 4 in one go (same data order and optimizer state)
    half = tmp_path / "half"
    r1 = runner.invoke(train.cli, sft_args(tiny_model_path, data, half, "--iters", "2"))
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(train.cli, sft_args(tiny_model_path, data, half, "--iters", "4", "--resume"))
    assert r2.exit_code == 0, r2.output
    assert "resuming" in r2.output
    a = mx.load(str(out / "adapters.safetensors"))
    b = mx.load(str(half / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-5).item(), k
    steps = [
        json.loads(line)["step"] for line in (half / "metrics.jsonl").read_text().splitlines() if "train_loss" in line
    ]
    assert steps == [2, 4]


@pytest.mark.slow
def test_sft_with_unlikelihood_trains_and_records_it(tiny_model_path, tmp_path):
    import yaml

    data = write_data(tmp_path / "data")
    out = tmp_path / "ul"
    result = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "2", "--unlikelihood", "2"))
    assert result.exit_code == 0, result.output
    assert "cross-entropy + 2 x unlikelihood" in result.output and "step     2/2 | loss" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["unlikelihood"] == 2.0
    bad = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, tmp_path / "bad", "--unlikelihood", "-1"))
    assert bad.exit_code != 0 and "unlikelihood" in bad.output


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_adapter(tiny_model_path, tmp_path, monkeypatch):
    import mlx.core as mx

    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    ok = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "2"))
    assert ok.exit_code == 0, ok.output
    good = mx.load(str(out / "adapters.safetensors"))
    real = train.completion_loss

    def nan_loss(*args):
        loss, ntoks = real(*args)
        return loss * float("nan"), ntoks

    monkeypatch.setattr(train, "completion_loss", nan_loss)
    bad = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "8", "--resume"))
    assert bad.exit_code == 1
    assert "nan" in bad.output.lower() and "last good adapter (step 2)" in bad.output
    kept = mx.load(str(out / "adapters.safetensors"))
    for k in good:
        assert mx.array_equal(kept[k], good[k]).item()
        assert mx.isfinite(kept[k]).all().item()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tiny_model_path, tmp_path):
    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", *sft_args(tiny_model_path, data, out, "--iters", "400")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, deadline = [], time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step ") and "loss" in line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "".join(lines)
    rest, _ = proc.communicate(timeout=240)
    output = "".join(lines) + rest
    assert proc.returncode == 130, output  # interrupted, not finished
    assert "stopped at step" in output and "--resume" in output
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert ckpts and (ckpts[-1] / "state.json").exists()
    stopped = json.loads((ckpts[-1] / "state.json").read_text())["step"]
    assert 0 < stopped < 400
    resumed = CliRunner().invoke(
        train.cli, sft_args(tiny_model_path, data, out, "--iters", str(stopped + 2), "--resume")
    )
    assert resumed.exit_code == 0, resumed.output
    assert f"step {stopped + 2:5d}/{stopped + 2}" in resumed.output


def test_bad_data_fails_before_the_model_is_loaded(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.jsonl").write_text('{"query": "q", "output": [["lex", "x"]]}\n{"query": "q2", "output": "nope"}\n')
    t = time.time()
    result = CliRunner().invoke(
        train.cli,
        ["sft", "--model", str(tmp_path / "no-model"), "--data", str(data), "--adapter-path", str(tmp_path / "o")],
    )
    assert result.exit_code == 2
    assert f"{data / 'd.jsonl'}:2:" in result.output and '"output" must be a non-empty list' in result.output
    assert time.time() - t < 10
    assert not (tmp_path / "o").exists()


def test_missing_model_and_bad_config_fail_fast(tmp_path):
    data = write_data(tmp_path / "data")
    result = CliRunner().invoke(
        train.cli,
        ["sft", "--model", str(tmp_path / "nope"), "--data", str(data), "--adapter-path", str(tmp_path / "o")],
    )
    assert result.exit_code == 2 and "neither a local folder" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iters: 5\nlora_rank: 8\n")
    result = CliRunner().invoke(train.cli, ["sft", "--config", str(cfg)])
    assert result.exit_code == 2 and "unknown config key 'lora_rank'" in result.output


def test_hub_id_offline_fails_within_seconds_with_a_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data = write_data(tmp_path / "data")
    t = time.time()
    result = CliRunner().invoke(
        train.cli, ["sft", "--model", "Qwen/Qwen3-1.7B", "--data", str(data), "--adapter-path", str(tmp_path / "o")]
    )
    assert result.exit_code == 2
    assert "pass a local model instead" in result.output and "--model path/to/folder" in result.output
    assert time.time() - t < 10


def test_configs_load_and_presets_differ_only_where_they_should():
    from runtime import load_config

    base = load_config(ROOT / "configs" / "sft.yaml", train.SFT_DEFAULTS)
    assert base["model"] == "Qwen/Qwen3-1.7B" and base["rank"] == 16 and base["alpha"] == 32
    assert base["learning_rate"] == 2e-4 and base["batch_size"] * base["grad_accumulation_steps"] == 16
    for name, model in [("sft-0.6B", "Qwen/Qwen3-0.6B"), ("sft-4B", "Qwen/Qwen3-4B")]:
        cfg = load_config(ROOT / "configs" / f"{name}.yaml", train.SFT_DEFAULTS)
        assert cfg["model"] == model


def fake_old_run(out):
    """A finished run's files (content does not matter: they must survive a failed --overwrite)."""
    ckpt = out / "checkpoints" / "step_0000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 2}')
    for name in ["adapters.safetensors", "adapter_config.json", "config.yaml", "metrics.jsonl"]:
        (out / name).write_text(f"old {name}")
    (out / "notes.txt").write_text("mine")
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_run_when_data_or_model_is_bad(tiny_model_path, tmp_path):
    """--overwrite used to delete the old run before looking at the data: a typo then left nothing."""
    out = tmp_path / "run"
    old = fake_old_run(out)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "d.jsonl").write_text('{"query": "q"}\n')
    r1 = CliRunner().invoke(train.cli, sft_args(tiny_model_path, bad, out, "--iters", "2", "--overwrite"))
    assert r1.exit_code == 2 and "d.jsonl:1" in r1.output, r1.output
    data = write_data(tmp_path / "data")
    r2 = CliRunner().invoke(train.cli, sft_args(tmp_path / "no-model", data, out, "--iters", "2", "--overwrite"))
    assert r2.exit_code == 2, r2.output
    assert snapshot(out) == old


def test_overwrite_restores_the_old_run_when_the_new_one_fails_before_a_checkpoint(
    tiny_model_path, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    old = fake_old_run(out)
    data = write_data(tmp_path / "data")

    def broken_loss(*args):
        raise RuntimeError("loss bug")

    monkeypatch.setattr(train, "completion_loss", broken_loss)
    result = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "4", "--overwrite"))
    assert isinstance(result.exception, RuntimeError) and "previous run is restored" in result.output
    assert snapshot(out) == old


def test_output_folder_holding_the_data_is_refused(tiny_model_path, tmp_path):
    data = write_data(tmp_path / "data")
    before = snapshot(tmp_path / "data")
    for out in [data, tmp_path, data / "run"]:
        result = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "2", "--overwrite"))
        assert result.exit_code == 2 and "must be a folder of its own" in result.output, result.output
    assert snapshot(tmp_path / "data") == before


def interrupt_after(monkeypatch, n_batches):
    """Send this process SIGINT (Ctrl-C) right after the trainer has taken `n_batches` batches."""
    real = train.make_iterate_batches

    def make(*args, **kwargs):
        inner = real(*args, **kwargs)

        def iterate(*a, **kw):
            for i, batch in enumerate(inner(*a, **kw), 1):
                yield batch
                if i == n_batches and kw.get("loop", a[3] if len(a) > 3 else False):
                    signal.raise_signal(signal.SIGINT)

        return iterate

    monkeypatch.setattr(train, "make_iterate_batches", make)


def test_the_printed_resume_hint_works_verbatim(tiny_model_path, tmp_path, monkeypatch):
    """The Ctrl-C hint used to re-read the default configs/sft.yaml (Qwen3-1.7B, batch 4) and refuse."""
    import shlex

    data = write_data(tmp_path / "data")
    out = tmp_path / "my run"
    interrupt_after(monkeypatch, 2)
    first = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "6"))
    assert first.exit_code == 130 and "stopped at step 2" in first.output, first.output
    hint = first.output.split("Continue with: ", 1)[1].splitlines()[0]
    argv = shlex.split(hint)
    assert argv[:2] == ["python", "train.py"]
    monkeypatch.undo()
    resumed = CliRunner().invoke(train.cli, argv[2:])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "step     6/6 | loss" in resumed.output
    state = json.loads((train.runtime.latest_checkpoint(out) / "state.json").read_text())
    assert state["step"] == 6


def test_resume_refuses_changed_settings_with_a_diff_and_accepts_safe_ones(tiny_model_path, tmp_path):
    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "2")).exit_code == 0
    bad = runner.invoke(train.cli, ["sft", "--resume", "--adapter-path", str(out), "--batch-size", "4", "--rank", "8"])
    assert bad.exit_code == 2
    assert "--batch-size 4 (the run has 2)" in bad.output and "--rank 8 (the run has 4)" in bad.output
    assert "--iters" in bad.output  # says which keys may change
    ok = runner.invoke(train.cli, ["sft", "--resume", "--adapter-path", str(out), "--iters", "4"])
    assert ok.exit_code == 0, ok.output
    assert "step     4/4 | loss" in ok.output


def write_split_data(folder, n_train=12, n_valid=4):
    """A folder with train.jsonl and valid.jsonl, so runs have a validation set."""
    write_data(folder / "t", n_train + n_valid)
    lines = (folder / "t" / "d.jsonl").read_text().splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(lines[:n_train]))
    (folder / "valid.jsonl").write_text("".join(lines[n_train:]))
    return folder


def test_validation_step_numbers_are_absolute_and_survive_resume(tiny_model_path, tmp_path):
    """Validation used to run before the step it was numbered after, counted from the resume point:
    a resumed run printed "step 24/25 | val loss" for the last step."""
    data = write_split_data(tmp_path / "data")
    runner = CliRunner()

    def val_steps(out):
        return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]

    full = tmp_path / "full"
    r = runner.invoke(train.cli, sft_args(tiny_model_path, data, full, "--iters", "4", "--steps-per-eval", "2"))
    assert r.exit_code == 0, r.output
    assert val_steps(full) == [0, 2, 4] and "step     4/4 | val loss" in r.output
    half = tmp_path / "half"
    r1 = runner.invoke(train.cli, sft_args(tiny_model_path, data, half, "--iters", "3", "--steps-per-eval", "2"))
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(train.cli, ["sft", "--resume", "--adapter-path", str(half), "--iters", "4"])
    assert r2.exit_code == 0, r2.output
    assert "step     4/4 | val loss" in r2.output and "step     3/4 | val loss" not in r2.output
    assert val_steps(half) == [0, 2, 3, 4]


@pytest.mark.parametrize(
    "yaml_text, flags, expected",
    [
        ('iters: "ten"\n', [], "c.yaml: iters: 'ten' is not allowed; iters must be an integer >= 1"),
        (
            "learning_rate: -1.0\n",
            [],
            "c.yaml: learning_rate: -1.0 is not allowed; learning_rate must be a number in (0, 1]",
        ),
        ("lr_schedule: linear\n", [], "lr_schedule must be one of 'cosine', 'constant'"),
        ("lora_keys: []\n", [], "lora_keys must be a non-empty list"),
        ("", ["--rank", "0"], "--rank 0: rank must be an integer >= 1"),
        ("", ["--batch-size", "0"], "--batch-size 0: batch_size must be an integer >= 1"),
        ("", ["--grad-accumulation-steps", "0"], "--grad-accumulation-steps 0: grad_accumulation_steps must be"),
        ("", ["--num-layers", "0"], "--num-layers 0: num_layers must be an integer >= 1, or -1"),
        ("", ["--dropout", "1.5"], "--dropout 1.5: dropout must be a number in [0, 1)"),
        ("", ["--learning-rate", "nan"], "--learning-rate nan: learning_rate must be"),
    ],
)
def test_bad_config_values_fail_before_the_model_loads_naming_key_source_and_range(
    tmp_path, yaml_text, flags, expected
):
    """These used to train anyway or end in a TypeError/ZeroDivisionError traceback after the model loaded."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    data = write_data(tmp_path / "data")
    args = ["sft", "--config", str(cfg), "--model", str(tmp_path / "no-model"), "--data", str(data), *flags]
    result = CliRunner().invoke(train.cli, [*args, "--adapter-path", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert expected in result.output, result.output
    assert "neither a local folder" not in result.output  # refused before the model was looked at


def test_every_shipped_config_passes_its_schema():
    import grpo
    from runtime import load_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        defaults, schema = (
            (grpo.GRPO_DEFAULTS, grpo.GRPO_SCHEMA)
            if path.name.startswith("grpo")
            else (train.SFT_DEFAULTS, train.SFT_SCHEMA)
        )
        load_config(path, defaults, schema=schema)


def test_yaml_exponent_without_a_dot_is_the_number_meant(tmp_path):
    """PyYAML reads `1e-4` as a string; a learning rate written that way is taken as 0.0001."""
    from runtime import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1e-4\niters: 1.0e+3\n")
    got = load_config(cfg, train.SFT_DEFAULTS, schema=train.SFT_SCHEMA)
    assert got["learning_rate"] == 1e-4 and got["iters"] == 1000 and isinstance(got["iters"], int)


def test_warmup_longer_than_the_run_is_scaled_with_a_warning():
    """--iters 40 with the shipped 50 warm-up steps used to end the run at its peak learning rate."""
    cfg = {**train.SFT_DEFAULTS, "iters": 40, "grad_accumulation_steps": 1, "warmup_steps": 50}
    msgs = []
    schedule = train.make_optimizer(cfg, echo=msgs.append)._schedulers["learning_rate"]
    peak = cfg["learning_rate"]
    assert msgs and "warmup_steps 50" in msgs[0] and "using 4" in msgs[0]
    assert abs(schedule(4).item() - peak) < 1e-6 * peak  # warm-up done after 4 steps
    assert schedule(39).item() < 0.2 * peak  # and the cosine decays by the end
    ok = []
    train.make_optimizer({**cfg, "iters": 400}, echo=ok.append)
    assert ok == []


def test_sft_says_what_it_is_doing_from_the_first_second(tiny_model_path, tmp_path):
    """SFT used to be silent until its first report (36 s on the demo: model load, then validation)."""
    data = write_split_data(tmp_path / "data")
    out = tmp_path / "run"
    r = CliRunner().invoke(train.cli, sft_args(tiny_model_path, data, out, "--iters", "4", "--steps-per-report", "4"))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("reading data from")
    assert any(x.startswith(f"loading {tiny_model_path}") for x in lines[:3])
    assert "step     0/4 | validation loss over 2 batches ..." in r.output
    first = next(i for i, x in enumerate(lines) if x.startswith("step     1/4 | loss"))  # before any report step
    assert first < next(i for i, x in enumerate(lines) if x.startswith("step     4/4 | loss"))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "train_loss" in x]
    assert steps == [4]  # the early line is printed, the log keeps its cadence
