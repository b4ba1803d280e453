"""cpujit.py: MLX's run-time CPU kernels compiled for this CPU, with the same values."""

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cpujit
import decode

ROOT = Path(__file__).resolve().parent.parent
x86_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64" or shutil.which("g++") is None,
    reason="the native kernel compiler is for x86-64 Linux with a g++",
)


def _clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", cpujit.DIR_ENV)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if cpujit.PREFIX not in p)
    env["TMPDIR"] = str(tmp_path)
    env.update(extra)
    return env


def test_plan_changes_nothing_when_opted_out_or_without_a_compiler(tmp_path, monkeypatch):
    env = _clean_env(tmp_path, QMD_NATIVE_JIT="0")
    assert cpujit.plan(env) == ({}, "MLX's own kernel compiler (QMD_NATIVE_JIT=0)")
    monkeypatch.setattr(cpujit.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(cpujit.sys, "platform", "linux")
    monkeypatch.setattr(cpujit.platform, "machine", lambda: "x86_64")
    plan, reason = cpujit.plan(_clean_env(tmp_path))
    assert plan == {} and "no g++" in reason
    monkeypatch.setattr(cpujit.platform, "machine", lambda: "aarch64")
    assert cpujit.plan(_clean_env(tmp_path))[0] == {}
    assert list(tmp_path.iterdir()) == []  # nothing written


@x86_linux
def test_plan_puts_a_compiler_shim_first_that_adds_flags_for_mlx_kernels_only(tmp_path):
    env, reason = cpujit.plan(_clean_env(tmp_path))
    root = Path(env["TMPDIR"])
    assert root.parent == tmp_path and root.name.startswith(cpujit.PREFIX) and env[cpujit.DIR_ENV] == str(root)
    shim = root / "bin" / "g++"
    assert env["PATH"].split(os.pathsep)[0] == str(shim.parent) and os.access(shim, os.X_OK)
    assert "native kernel compiler" in reason
    # the same machine and compiler give the same folder (kernels built once), and planning again is a no-op
    assert cpujit.plan(_clean_env(tmp_path))[0] == env
    assert cpujit.plan({**_clean_env(tmp_path), **env}) == ({}, "native kernel compiler (inherited)")

    # outside MLX's kernel folder the shim is the plain compiler: same preprocessor output, no -march
    src = tmp_path / "probe.cpp"
    src.write_text("#ifdef __AVX2__\nint avx2 = 1;\n#else\nint avx2 = 0;\n#endif\n")
    plain = subprocess.run([str(shim), "-E", str(src)], capture_output=True, text=True, check=True).stdout
    real = subprocess.run(["g++", "-E", str(src)], capture_output=True, text=True, check=True).stdout
    assert plain.splitlines()[-1] == real.splitlines()[-1]
    kernels = root / "mlx" / "0" / "cpu"
    kernels.mkdir(parents=True)
    (kernels / "k.cpp").write_text(src.read_text())
    native = subprocess.run([str(shim), "-E", str(kernels / "k.cpp")], capture_output=True, text=True, check=True)
    with open("/proc/cpuinfo") as f:
        has_avx2 = " avx2" in f.read()
    assert native.stdout.splitlines()[-1] == f"int avx2 = {int(has_avx2)};"


SCRIPT = """
import hashlib, json, os, sys
sys.path.insert(0, {root!r})
import runtime
runtime.ensure_fast_blas()
import mlx.core as mx, mlx.nn as nn
import cpujit
swiglu = mx.compile(lambda g, x: nn.silu(g) * x, shapeless=True)
shifted = mx.compile(lambda s, m: mx.exp(s - m), shapeless=True)
mx.random.seed(0)
g, x = mx.random.normal((64, 1536)) * 6, mx.random.normal((64, 1536))
s = mx.random.normal((64, 3, 3, 150)) * 20
out = [swiglu(g, x), shifted(s, s.max(axis=-1, keepdims=True)), swiglu(g[:3, :5], x[:3, :5])]
mx.eval(out)
digest = hashlib.sha256(b"".join(bytes(memoryview(a)) for a in out)).hexdigest()
print(json.dumps({{"digest": digest, "active": cpujit.active(), "jit": runtime.environment()["cpu_jit"],
                  "tmpdir": os.environ.get("TMPDIR")}}))
"""


@pytest.mark.slow
@x86_linux
def test_native_kernels_compute_the_same_bytes_and_scripts_report_them(tmp_path):
    script = tmp_path / "kernels.py"
    script.write_text(SCRIPT.format(root=str(ROOT)))
    runs = {}
    for flag in ("0", "1"):
        env = _clean_env(tmp_path, QMD_NATIVE_JIT=flag)
        for k in ("LD_PRELOAD", "QMD_BLAS_REASON"):  # a fresh script: let it re-execute itself
            env.pop(k, None)
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs[flag] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["0"]["active"] is False and runs["0"]["jit"] == "MLX default"
    assert runs["1"]["active"] is True and runs["1"]["jit"] == "native (-march=native)"
    assert runs["0"]["digest"] == runs["1"]["digest"]  # bit for bit
    built = list(Path(runs["1"]["tmpdir"]).glob("mlx/*/cpu/*.so"))
    assert len(built) >= 2, "MLX built its fused kernels in the native compiler's folder"


@pytest.mark.parametrize("mask_shape", [None, (4, 1, 1, 37), (1, 1, 1, 37), (4, 9, 1, 37), "additive"])
def test_attention_step_equals_mlx_attention(mask_shape):
    import mlx.core as mx

    mx.random.seed(1)
    q = mx.random.normal((4, 9, 1, 64))
    k, v = mx.random.normal((4, 3, 37, 64)), mx.random.normal((4, 3, 37, 64))
    if mask_shape == "additive":
        mask = mx.random.normal((4, 1, 1, 37)) * 3
    elif mask_shape is not None:
        mask = mx.random.uniform(shape=mask_shape) > 0.3
        mask[..., 0] = True  # every row sees at least one key
    else:
        mask = None
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask)
    assert mx.abs(decode.attention_step(q, k, v, 0.125, mask) - ref).max().item() < 1e-5


def test_generation_swaps_the_attention_only_while_it_runs(tiny_model, monkeypatch):
    import mlx.core as mx

    model, tok = tiny_model
    module = sys.modules[type(model).__module__]
    original = module.scaled_dot_product_attention
    seen = []

    def spy(queries, *args, **kwargs):
        seen.append(module.scaled_dot_product_attention is not original)
        return original(queries, *args, **kwargs)

    monkeypatch.setattr(decode, "attention_step", lambda q, k, v, scale, mask=None: spy(q, k, v, None, scale, mask))
    monkeypatch.setattr(cpujit, "active", lambda: True)
    prompts = [tok.encode("auth config"), tok.encode("how do I rotate logs")]
    mx.random.seed(0)
    decode.generate(model, prompts, max_tokens=4, temp=0.0)
    assert module.scaled_dot_product_attention is original
    assert seen and all(seen)  # one-query steps went through attention_step while it was swapped in
    monkeypatch.setattr(cpujit, "active", lambda: False)
    seen.clear()
    decode.generate(model, prompts, max_tokens=4, temp=0.0)
    assert seen == []  # scalar kernels: mlx-lm's own attention
