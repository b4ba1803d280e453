"""Shared fixtures. The test process itself runs on OpenBLAS (re-executed before MLX loads)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pytest  # noqa: E402

import runtime  # noqa: E402


def pytest_configure(config):
    # Re-execute the test run with OpenBLAS preloaded (Linux), before any test module imports MLX.
    # pytest already captures fds 1/2 here: hand them back first, or the new process writes into
    # the capture files and its output is lost.
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    runtime.ensure_fast_blas()
    if capman is not None:
        capman.resume_global_capture()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A 2-layer random-weight qwen3 model folder with the real Qwen tokenizer (built offline, ~3 s)."""
    from tiny_qwen3 import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    """(model, tokenizer) loaded through the project's own model loading."""
    return runtime.load_model(str(tiny_model_path))


@pytest.fixture(scope="session")
def qwen_tokenizer(tiny_model):
    return tiny_model[1]
