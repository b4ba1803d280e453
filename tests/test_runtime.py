"""Fast BLAS on Linux, configs, atomic writes, model loading."""

import os
import sys

import pytest
from conftest import doctor

import runtime
from runtime import ConfigError, load_config

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS preload is Linux-only")


@linux_only
def test_script_started_without_ld_preload_ends_up_on_openblas():
    report = doctor({})
    assert report["blas"].startswith("OpenBLAS"), report
    assert report["compute_dtype"] == "float32"
    assert report["matmul_gflops_float32"] > 0


@linux_only
def test_opt_out_keeps_the_bundled_blas():
    assert "bundled reference BLAS" in doctor({"QMD_FAST_BLAS": "0"})["blas"]


@linux_only
def test_the_test_process_itself_runs_on_openblas():
    assert runtime.blas_in_use().startswith("OpenBLAS")


def test_config_merges_defaults_yaml_and_cli(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("iters: 10\nlearning_rate: 1.0e-4\n")
    out = load_config(cfg, {"iters": 1, "learning_rate": 0.1, "seed": 0}, {"iters": 20, "seed": None})
    assert out == {"iters": 20, "learning_rate": 1e-4, "seed": 0}


def test_config_unknown_key_names_file_and_suggestion(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lerning_rate: 1.0e-4\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml: unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"
    ):
        load_config(cfg, {"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="command line: unknown config key 'zzz'"):
        load_config(None, {"learning_rate": 0.1}, {"zzz": 1})


def test_config_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad, {"a": 1})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml", {"a": 1})
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(lst, {"a": 1})


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "f.json"
    runtime.atomic_write_json(p, {"a": 1})
    runtime.atomic_write(p, b"bytes")
    assert p.read_bytes() == b"bytes"
    assert [x.name for x in p.parent.iterdir()] == ["f.json"]


def test_tiny_model_loads_in_float32_and_generates(tiny_model):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import generate

    model, tok = tiny_model
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(model.parameters()))
    assert model.args.model_type == "qwen3" and len(model.layers) == 2
    text = generate(model, tok, "lex: auth", max_tokens=5, verbose=False)
    assert isinstance(text, str)


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(runtime.ModelError, match="neither a local folder, a .gguf file nor a Hugging Face id"):
        runtime.load_model(str(tmp_path / "missing-model"))
    with pytest.raises(runtime.ModelError, match="no adapter_config.json"):
        runtime.load_model(str(tmp_path), adapter_path=str(tmp_path))


def _files(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_run(out):
    (out / "checkpoints" / "step_1").mkdir(parents=True)
    (out / "checkpoints" / "step_1" / "state.json").write_text("old")
    (out / "metrics.jsonl").write_text("old")
    (out / "notes.txt").write_text("mine")
    return _files(out)


def test_replaced_run_restores_after_a_kill_before_the_first_checkpoint(tmp_path):
    """A process killed after moving the old run aside: the next run in that folder restores it."""
    out = tmp_path / "run"
    old = _old_run(out)
    runtime.ReplacedRun(out, ["checkpoints", "metrics.jsonl"]).move_aside()
    (out / "metrics.jsonl").write_text("new, partial")  # the new run started writing, then died
    (out / "checkpoints" / "step_2").mkdir(parents=True)  # an incomplete checkpoint (no state.json)
    msgs = []
    runtime.ReplacedRun(out, ["checkpoints", "metrics.jsonl"]).recover(msgs.append)
    assert _files(out) == old and "restored" in msgs[0]


def test_replaced_run_is_dropped_once_the_new_run_has_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    runtime.ReplacedRun(out, ["checkpoints", "metrics.jsonl"]).move_aside()
    (out / "checkpoints" / "step_2").mkdir(parents=True)
    (out / "checkpoints" / "step_2" / "state.json").write_text("new")
    runtime.ReplacedRun(out, ["checkpoints", "metrics.jsonl"]).recover()
    assert _files(out) == {"checkpoints/step_2/state.json": "new", "notes.txt": "mine"}


def test_replaced_run_cut_short_while_moving_puts_everything_back(tmp_path):
    out = tmp_path / "run"
    old = _old_run(out)
    aside = out / runtime.ReplacedRun.ASIDE
    aside.mkdir()
    os.replace(out / "metrics.jsonl", aside / "metrics.jsonl")  # killed after the first of two moves
    runtime.ReplacedRun(out, ["metrics.jsonl", "checkpoints"]).recover()
    assert _files(out) == old


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_output_files_honour_the_umask(tmp_path, mask):
    """metrics.jsonl, config.yaml, adapter_config.json, state.json and eval JSON went through mkstemp
    and came out 0600 whatever the umask."""
    import mlx.core as mx

    old = os.umask(mask)
    try:
        runtime.atomic_write(tmp_path / "a.txt", "x")
        runtime.atomic_write_json(tmp_path / "state.json", {"step": 1})
        runtime.save_config(tmp_path, {"iters": 1})
        log = runtime.MetricsLog(tmp_path / "metrics.jsonl")
        log.log({"step": 1})
        log.truncate_after(1)
        runtime.save_safetensors_atomic(tmp_path / "adapters.safetensors", {"w": mx.zeros((2,))})
    finally:
        os.umask(old)
    for name in ["a.txt", "state.json", "config.yaml", "metrics.jsonl", "adapters.safetensors"]:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_run_command_maps_errors_to_the_exit_statuses_scripts_rely_on(capsys):
    """train.py and grpo.py share one mapping: usage errors 2, a diverged run 1, Ctrl-C 130."""

    class Usage(ValueError):
        pass

    def fails(exc):
        def body():
            raise exc

        return body

    cases = [
        (fails(ConfigError("bad key")), 2),
        (fails(runtime.ModelError("no model")), 2),
        (fails(Usage("bad data")), 2),
        (fails(runtime.TrainingDiverged("loss is nan")), 1),
        (lambda: {"interrupted": True}, 130),
    ]
    for body, code in cases:
        with pytest.raises(SystemExit) as exit_info:
            runtime.run_command(body, usage_errors=(Usage,))
        assert exit_info.value.code == code
    assert "error: loss is nan" in capsys.readouterr().err
    assert runtime.run_command(lambda: {"interrupted": False}) == {"interrupted": False}


def test_interruptible_turns_the_first_ctrl_c_into_a_flag_and_restores_the_handler():
    import signal

    before = signal.getsignal(signal.SIGINT)
    said = []
    with runtime.interruptible(said.append, "step") as flag:
        signal.raise_signal(signal.SIGINT)
        assert flag["flag"] and "finishing this step" in said[0]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C aborts
    assert signal.getsignal(signal.SIGINT) is before
