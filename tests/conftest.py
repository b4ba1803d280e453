"""Shared fixtures. The test process itself runs on OpenBLAS (re-executed before MLX loads)."""

import json
import os
import subprocess
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


def doctor(env_changes) -> dict:
    """`train.py doctor --json --quick` in a fresh process, with no BLAS choice inherited from this one
    (LD_PRELOAD and the QMD_* markers dropped), then `env_changes` applied (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "QMD_BLAS_REASON", "QMD_FAST_BLAS")}
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = subprocess.run(
        [sys.executable, "train.py", "doctor", "--json", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
