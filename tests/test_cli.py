"""Every script has a --help that explains it, and train.py doctor reports the device and BLAS."""

import importlib

import pytest
from click.testing import CliRunner


@pytest.mark.parametrize("script", ["train", "grpo", "eval", "convert", "reward", "data"])
def test_help_works(script):
    mod = importlib.import_module(script)
    result = CliRunner().invoke(mod.cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_doctor_prints_device_blas_and_gflops():
    import train

    result = CliRunner().invoke(train.cli, ["doctor", "--quick"])
    assert result.exit_code == 0, result.output
    for key in ["device", "blas", "matmul_gflops_float32", "compute_dtype"]:
        assert key in result.output


def test_demo_grpo_trains_on_the_sft_adapter_then_evaluates_and_exports_the_grpo_one(tmp_path, monkeypatch):
    # demo.py's wiring only (each stage is a project command tested elsewhere): which commands run, in
    # which order, on which adapter; --skip-train without a trained adapter stops before anything runs
    import demo

    sft, grpo = tmp_path / "demo", tmp_path / "demo-grpo"
    monkeypatch.setattr(demo, "ADAPTER", sft)
    monkeypatch.setattr(demo, "GRPO_ADAPTER", grpo)
    ran, searched = [], []
    monkeypatch.setattr(demo, "run", lambda stage, *args, timings: ran.append((stage, [str(a) for a in args])))
    monkeypatch.setattr(demo, "search_notes", lambda gguf, timings: searched.append(gguf))

    result = CliRunner().invoke(demo.main, ["--skip-train", "--grpo"])
    assert result.exit_code == 2 and "no trained adapter" in result.output and ran == []

    sft.mkdir()
    (sft / "adapters.safetensors").write_bytes(b"")
    result = CliRunner().invoke(demo.main, ["--skip-train", "--grpo"])
    assert result.exit_code == 0, result.output
    assert [stage for stage, _ in ran] == ["GRPO", "eval (MLX)", "export", "eval (QMD)"]
    grpo_args = ran[0][1]
    assert grpo_args[0] == "grpo.py" and grpo_args[grpo_args.index("--adapter-path") + 1] == str(grpo)
    assert "--overwrite" in grpo_args and grpo_args[grpo_args.index("--steps") + 1] == "40"
    eval_args, export_args = ran[1][1], ran[2][1]
    assert eval_args[eval_args.index("--adapter") + 1] == str(grpo)
    assert export_args[export_args.index("-o") + 1] == str(tmp_path / "demo-grpo-gguf")
    assert searched == [tmp_path / "demo-grpo-gguf" / demo.GGUF_NAME]
