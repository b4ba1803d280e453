"""MLX's CPU kernel compiler, told what CPU it compiles for: fused kernels vectorised on x86 Linux.

    env, reason = cpujit.plan()     # runtime.ensure_fast_blas() adds env to its re-execution
    cpujit.active()                 # True in a process that runs with it (decode.py asks)

Why: `mx.compile` (mlx-lm's swiglu, nn.silu, decode.py's attention softmax) fuses elementwise ops
into one C++ kernel that MLX writes and builds at run time with `g++ -std=c++17 -O3 -fPIC -shared`
(mlx 0.32; the AVX2 flags are added only when MLX itself was built with AVX2, which the x86 wheels
are not). Three things in that command keep every kernel scalar on x86: no `-march`, so no FMA,
AVX or rounding instructions and each `fma`/`floor` of MLX's polynomial exp is a libm call; `-fPIC`
semantic interposition, so the kernel calls libmlx's out-of-line `simd::exp<float, 1>` through the
PLT instead of inlining it; and, once inlined, the `select`s of exp and sigmoid count as control flow
unless FP ops may be assumed not to trap. A fused SiLU then costs ~12 ns an element, as much as MLX's
own scalar exp. Built with `-march=native -fno-semantic-interposition -finline-limit=10000
-fno-math-errno -fno-trapping-math` the same loop is vectorised (AVX-512 or AVX2 with FMA). The
values are the same: the source, the operations and their order are MLX's, `-std=c++17` keeps
`-ffp-contract=off` (no a * b + c is fused that MLX did not write as fma), and neither flag changes
a result (tests/test_cpujit.py compares the bytes).

How: MLX runs the command through the shell, so `g++` is whatever PATH finds first. plan() writes a
two-line shell script named `g++` that adds the flags for MLX's kernel folder only (anything else it
passes through untouched) and execs the real g++ found on PATH, and puts it first on PATH. MLX keeps
built kernels in `$TMPDIR/mlx/<version>/cpu` by kernel name, not by flags, so kernels built earlier
without the flags would be reused: the re-executed process gets its own TMPDIR, a folder inside the
usual one named for the compiler, the flags and this CPU's instruction sets. Only on x86-64 Linux
with a g++ (elsewhere nothing changes: MLX's macOS build has NEON kernels, and a GPU runs its own);
QMD_NATIVE_JIT=0 opts out.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

FLAGS = "-march=native -fno-semantic-interposition -finline-limit=10000 -fno-math-errno -fno-trapping-math"
DIR_ENV = "QMD_NATIVE_JIT_DIR"  # set in a process that runs with the native compiler (active())
PREFIX = "qmd-query-expansion-jit-"


def active() -> bool:
    """Whether this process's MLX kernels are built by the native compiler (see the module docstring)."""
    d = os.environ.get(DIR_ENV)
    return bool(d) and os.environ.get("TMPDIR") == d and Path(d, "bin", "g++").exists()


def _without_shim(path: str) -> str:
    """PATH with plan()'s shim folders taken out."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if PREFIX not in p)


def plan(environ=None) -> tuple[dict, str]:
    """(environment variables for the re-executed process, one line saying what and why).

    {} when nothing should change: not x86-64 Linux, QMD_NATIVE_JIT=0, no g++, or already planned."""
    environ = os.environ if environ is None else environ
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}, "MLX's own kernel compiler (not x86-64 Linux)"
    if environ.get("QMD_NATIVE_JIT", "1") == "0":
        return {}, "MLX's own kernel compiler (QMD_NATIVE_JIT=0)"
    if environ.get(DIR_ENV) and environ.get("TMPDIR") == environ.get(DIR_ENV):
        return {}, "native kernel compiler (inherited)"
    real = shutil.which("g++", path=_without_shim(environ.get("PATH", "")))
    if real is None:
        return {}, "MLX's own kernel compiler (no g++ on PATH: MLX cannot fuse kernels either)"
    real = os.path.realpath(real)
    base = environ.get("TMPDIR") or tempfile.gettempdir()
    import blas

    cpu_flags = " ".join(sorted(blas.cpu_info().flags))
    key = hashlib.sha256(f"{real}\n{FLAGS}\n{cpu_flags}".encode()).hexdigest()[:12]
    root = Path(base) / f"{PREFIX}{key}"
    shim = root / "bin" / "g++"
    text = (
        "#!/bin/sh\n"
        "# qmd-query-expansion (cpujit.py): MLX's run-time kernels built for this CPU; anything else as is\n"
        f'case "$*" in *"{root}/mlx/"*) exec "{real}" "$@" {FLAGS} ;; esac\n'
        f'exec "{real}" "$@"\n'
    )
    try:
        if not shim.exists() or shim.read_text() != text:
            shim.parent.mkdir(parents=True, exist_ok=True)
            tmp = shim.with_name(f".g++.{os.getpid()}")
            tmp.write_text(text)
            tmp.chmod(0o755)
            os.replace(tmp, shim)  # atomic: a concurrent process sees the old script or the new one
    except OSError as e:
        return {}, f"MLX's own kernel compiler (cannot write {shim}: {e.strerror})"
    env = {
        "PATH": os.pathsep.join([str(shim.parent), environ.get("PATH", "")]),
        "TMPDIR": str(root),
        DIR_ENV: str(root),
    }
    return env, f"native kernel compiler ({Path(real).name} {FLAGS.split()[0]})"


def without(environ) -> dict:
    """A copy of `environ` for a child process that runs MLX's own kernel compiler (benchmark baselines)."""
    env = dict(environ)
    root = env.pop(DIR_ENV, None)
    if root and env.get("TMPDIR") == root:
        env["TMPDIR"] = str(Path(root).parent)  # plan() put the folder inside the usual temporary folder
    env["PATH"] = _without_shim(env.get("PATH", ""))
    env["QMD_NATIVE_JIT"] = "0"
    return env


def summary() -> str:
    """For banners and reports: which compiler builds MLX's fused CPU kernels in this process."""
    return "native (-march=native)" if active() else "MLX default"
