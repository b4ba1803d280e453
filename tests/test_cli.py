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
