"""Fast BLAS on Linux: the library and kernel behind MLX's float32 matmuls, chosen, checked and reported.

    python blas.py                # what this machine runs on, and why (probes the candidates again)
    python blas.py --json         # the same as JSON

Why this exists. `mlx[cpu]` on Linux ships a reference BLAS (~7 GFLOP/s); MLX's float32 matmuls call
`cblas_sgemm`, so preloading Debian's OpenBLAS makes them 30-60x faster. But OpenBLAS picks its kernel
from a table of CPU models, and a library older than the CPU falls back to a weaker kernel: Debian's
0.3.21 runs its SSE3 "Prescott" kernel on an Intel Xeon of family 6 model 207 (28 GFLOP/s instead of
167 with AVX-512) and its AVX2 "Haswell" kernel on an AMD family 26 (Zen 5) CPU (225 instead of 420).
So the choice follows the CPU's instruction-set flags, not its model number:

  1. `cpu_info()` reads /proc/cpuinfo; `isa_tier()` ranks what the flags offer (SSE < AVX < AVX2 <
     AVX-512) and `KERNEL_TIER` ranks OpenBLAS's own kernel names the same way.
  2. If the kernel OpenBLAS picks by itself is of a lower tier than the CPU's, `kernel_candidates()`
     lists the better kernels this CPU can run (best first), and each is probed in a short child
     process (`OPENBLAS_CORETYPE` is read when the library loads): the library must report that kernel
     back (an older OpenBLAS may not know it), compute a small product exactly, and then run a 1024^3
     float32 product. The fastest is kept, and only if it beats the library's own choice by 5%.
  3. The decision is cached per (library file, CPU) in ~/.cache/qmd-query-expansion/blas.json, so
     probing happens once per machine (about a second); later starts read the cache.

A user's own choice always wins: `OPENBLAS_CORETYPE` set to anything, `QMD_BLAS=/path/to/libblas.so`
(any CBLAS library, e.g. MKL's libmkl_rt.so), or `QMD_FAST_BLAS=0` (keep the bundled BLAS).
`describe()` asks the loaded library itself what it runs (`openblas_get_config`/`openblas_get_corename`,
MKL's version string), so banners, metrics.jsonl headers, eval reports and benchmark rows name the
library, version and kernel, and the reason it was chosen.

This module imports nothing heavy (no MLX, no numpy): it runs before MLX loads.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
ISA_NAMES = ("SSE", "AVX", "AVX2", "AVX-512")
# OpenBLAS's x86 kernel names (DYNAMIC_ARCH builds) by the widest vector instructions they use.
KERNEL_TIER = {
    **dict.fromkeys(
        "katmai coppermine northwood prescott banias atom core2 penryn dunnington nehalem athlon opteron "
        "opteron_sse3 barcelona bobcat nano generic".split(),
        0,
    ),
    **dict.fromkeys("sandybridge bulldozer piledriver steamroller".split(), 1),
    **dict.fromkeys("haswell zen excavator".split(), 2),
    **dict.fromkeys("skylakex cooperlake sapphirerapids".split(), 3),
}
# OpenBLAS's idle threads spin for 2^28 cycles after each call by default, burning the cores MLX's own
# threads need (on 2 cores: 11-15 s of system CPU time per 40 s of demo work). 2^10 cycles measured the
# same speed with a quarter of the system time (bench/bench_blas.py); a user's own setting wins.
THREAD_TIMEOUT = "10"
SWITCH_MARGIN = 1.05  # a probed kernel must beat the library's own choice by 5% to replace it
PROBE_SIZE = 1024


# ----------------------------------------------------------------------------
# The CPU


@dataclass(frozen=True)
class CpuInfo:
    vendor: str  # GenuineIntel, AuthenticAMD, ...
    family: int
    model: int
    name: str
    flags: frozenset

    def describe(self) -> str:
        return (
            f"{self.name or self.vendor} (family {self.family}, model {self.model}, {ISA_NAMES[isa_tier(self.flags)]})"
        )


def cpu_info(text: str | None = None) -> CpuInfo:
    """The first processor of /proc/cpuinfo (or of `text`)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())

    def number(key):
        try:
            return int(fields.get(key, "0"))
        except ValueError:
            return 0

    return CpuInfo(
        vendor=fields.get("vendor_id", ""),
        family=number("cpu family"),
        model=number("model"),
        name=fields.get("model name", ""),
        flags=frozenset(fields.get("flags", "").split()),
    )


def isa_tier(flags) -> int:
    """0 SSE, 1 AVX, 2 AVX2 (+FMA), 3 AVX-512 (F, BW, VL and DQ: what OpenBLAS's SkylakeX kernels use)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return 3
    if {"avx2", "fma"} <= flags:
        return 2
    return 1 if "avx" in flags else 0


def kernel_candidates(flags, current: str) -> list:
    """OpenBLAS kernels better than `current` that a CPU with `flags` can run, best first; [] when
    the library's own choice already uses what the CPU offers (or is a kernel we do not know, e.g. an
    ARM one or a newer library's own name: never second-guessed)."""
    tier = isa_tier(flags)
    have = KERNEL_TIER.get(current.lower())
    if have is None or have >= tier:
        return []
    ladder = [
        (3, "Cooperlake", "avx512_bf16" in flags),
        (3, "SkylakeX", True),
        (2, "Haswell", True),
        (2, "Zen", True),
        (1, "Sandybridge", True),
    ]
    return [name for t, name, ok in ladder if ok and have < t <= tier]


# ----------------------------------------------------------------------------
# Probing a library in a child process


def _symbol(lib, *names):
    for n in names:
        try:
            return getattr(lib, n)
        except AttributeError:
            continue
    return None


def _probe_here(path: str, n: int) -> dict:
    """Runs in the probe child: kernel name, an exactness check and float32 n^3 GFLOP/s via ctypes."""
    lib = ctypes.CDLL(path)
    corename = _symbol(lib, "openblas_get_corename", "scipy_openblas_get_corename")
    kernel = ""
    if corename is not None:
        corename.restype = ctypes.c_char_p
        kernel = corename().decode()
    sgemm = _symbol(lib, "cblas_sgemm")
    if sgemm is None:
        return {"kernel": kernel, "ok": False, "why": "no cblas_sgemm"}
    sgemm.restype = None
    # (order, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]

    def gemm(m, a, b, c):  # row-major, no transposes: c = a @ b, all m x m
        sgemm(101, 111, 111, m, m, m, 1.0, a, m, b, m, 0.0, c, m)

    # exactness: small integers are exact in float32, so the product must match to the last bit
    m = 24
    A = [((i * 7 + k * 3) % 11) - 5 for i in range(m) for k in range(m)]
    B = [((k * 5 + j) % 7) - 3 for k in range(m) for j in range(m)]
    want = [sum(A[i * m + k] * B[k * m + j] for k in range(m)) for i in range(m) for j in range(m)]
    a, b, c = ((ctypes.c_float * (m * m))(*x) for x in (A, B, [0] * (m * m)))
    gemm(m, a, b, c)
    if list(c) != [float(w) for w in want]:
        return {"kernel": kernel, "ok": False, "why": "wrong result"}
    a, b, c = ((ctypes.c_float * (n * n))() for _ in range(3))
    ctypes.memset(a, 0x3F, ctypes.sizeof(a))  # 0x3F3F3F3F = 0.747 in every element: no denormals
    ctypes.memset(b, 0x3F, ctypes.sizeof(b))
    gemm(n, a, b, c)  # warm-up: thread pool start, page faults
    times = []
    for _ in range(5):
        t = time.perf_counter()
        gemm(n, a, b, c)
        times.append(time.perf_counter() - t)
    return {"kernel": kernel, "ok": True, "gflops": round(2 * n**3 / statistics.median(times) / 1e9, 1)}


def probe(path: str, coretype: str | None = None, n: int = PROBE_SIZE, timeout: float = 60) -> dict:
    """Load `path` in a fresh process (with OPENBLAS_CORETYPE=coretype if given) and measure it.

    A child process, because the kernel is fixed when the library loads, and because a kernel that
    uses instructions the CPU lacks dies with SIGILL there instead of here."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_VERBOSE", "LD_PRELOAD")}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--probe", path, str(n)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"kernel": coretype or "", "ok": False, "why": "probe timed out"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"kernel": coretype or "", "ok": False, "why": f"probe exited {proc.returncode}"}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------
# The decision (cached per library file and CPU)


def cache_file() -> Path:
    return Path(os.environ.get("QMD_CACHE_DIR", Path.home() / ".cache" / "qmd-query-expansion")) / "blas.json"


def _cache_key(path: str, cpu: CpuInfo) -> str:
    st = Path(path).stat()
    ident = [os.path.realpath(path), st.st_size, int(st.st_mtime), cpu.vendor, cpu.family, cpu.model]
    ident.append(sorted(cpu.flags))
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _cached(key: str, compute, use_cache: bool = True) -> dict:
    """cache_file()[key], computed and stored on a miss (a read-only home only costs a re-probe)."""
    cache = cache_file()
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    if use_cache and key in table:
        return table[key]
    table[key] = value = compute()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, cache)
    except OSError:
        pass
    return value


def choose_kernel(path: str, cpu: CpuInfo | None = None, use_cache: bool = True) -> dict:
    """{"coretype": name or None (keep the library's own), "default": its own kernel, "reason": text,
    "probes": {kernel: GFLOP/s}}. Probes only when the library's own kernel is below the CPU's tier."""
    cpu = cpu or cpu_info()
    return _cached(_cache_key(path, cpu), lambda: _decide(path, cpu), use_cache)


def _decide(path: str, cpu: CpuInfo) -> dict:
    base = probe(path)
    default = base.get("kernel", "")
    decision = {"coretype": None, "default": default, "reason": "", "probes": {}}
    if base.get("ok"):
        decision["probes"][default] = base["gflops"]
    candidates = kernel_candidates(cpu.flags, default)
    if not candidates:
        decision["reason"] = f"OpenBLAS's own choice for this CPU ({ISA_NAMES[isa_tier(cpu.flags)]})"
        return decision
    best, best_gflops = None, base.get("gflops", 0.0) * SWITCH_MARGIN
    for name in candidates:
        r = probe(path, name)
        if r.get("kernel", "").lower() != name.lower() or not r.get("ok"):
            continue  # this OpenBLAS does not know the kernel, or it failed the exactness check
        decision["probes"][name] = r["gflops"]
        if r["gflops"] > best_gflops:
            best, best_gflops = name, r["gflops"]
    why = (
        f"this OpenBLAS picked {default} ({ISA_NAMES[KERNEL_TIER[default.lower()]]}) for {cpu.vendor} family "
        f"{cpu.family} model {cpu.model} with {ISA_NAMES[isa_tier(cpu.flags)]}"
    )
    measured = ", ".join(f"{k} {v:.0f}" for k, v in decision["probes"].items())
    decision["coretype"] = best
    decision["reason"] = (
        f"chosen: {why}; GFLOP/s {measured}"
        if best
        else f"kept: {why}, and no other kernel measured faster ({measured})"
    )
    return decision


def user_kernel_note(path: str, cpu: CpuInfo | None = None) -> str:
    """Why the kernel is what it is when the user set OPENBLAS_CORETYPE - with a measured warning when
    it is weaker than what this CPU runs best. The user's choice is still what runs."""
    user = os.environ.get("OPENBLAS_CORETYPE", "")
    cpu = cpu or cpu_info()
    note = f"OPENBLAS_CORETYPE={user} set in the environment"
    if KERNEL_TIER.get(user.lower(), 99) >= isa_tier(cpu.flags):
        return note
    best = choose_kernel(path, cpu)
    best_name = best["coretype"] or best["default"]
    best_gflops = best["probes"].get(best_name)
    mine = _cached(f"{_cache_key(path, cpu)}:{user.lower()}", lambda: probe(path, user))
    if not best_gflops or not mine.get("ok") or mine["gflops"] * SWITCH_MARGIN >= best_gflops:
        return note
    return (
        f"{note}: an {ISA_NAMES[KERNEL_TIER[user.lower()]]} kernel on a CPU with {ISA_NAMES[isa_tier(cpu.flags)]}, "
        f"{mine['gflops']:.0f} GFLOP/s where {best_name} measured {best_gflops:.0f}; unset it to let the project choose"
    )


# ----------------------------------------------------------------------------
# Preloading (called by runtime.ensure_fast_blas before MLX is imported)


def find_openblas() -> str | None:
    override = os.environ.get("QMD_OPENBLAS")
    if override:
        return override if Path(override).exists() else None
    return next((p for p in OPENBLAS_CANDIDATES if Path(p).exists()), None)


def plan() -> tuple:
    """(library path or None, extra environment, reason) for the re-executed process."""
    user_lib = os.environ.get("QMD_BLAS")
    if user_lib:
        if not Path(user_lib).exists():
            return None, {}, f"QMD_BLAS={user_lib} does not exist"
        return user_lib, {}, "chosen by the user (QMD_BLAS)"
    lib = find_openblas()
    if lib is None:
        return None, {}, "OpenBLAS not found"
    env = {} if os.environ.get("OPENBLAS_THREAD_TIMEOUT") else {"OPENBLAS_THREAD_TIMEOUT": THREAD_TIMEOUT}
    if os.environ.get("OPENBLAS_CORETYPE"):
        return lib, env, user_kernel_note(lib)
    decision = choose_kernel(lib)
    if decision["coretype"]:
        env["OPENBLAS_CORETYPE"] = decision["coretype"]
    return lib, env, decision["reason"]


# ----------------------------------------------------------------------------
# What the running process got


def loaded_library() -> str | None:
    """Path of the BLAS library this process preloaded (mapped, and named in LD_PRELOAD), or None.

    numpy's and scipy's own OpenBLAS copies are mapped too once numpy is imported, but their symbols
    are prefixed (scipy_cblas_sgemm): MLX never calls them, so they are not the answer."""
    try:
        maps = {Path(line.split()[-1]) for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line}
    except OSError:
        return None
    for entry in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        if (
            entry
            and Path(entry).exists()
            and Path(os.path.realpath(entry)) in {Path(os.path.realpath(m)) for m in maps}
        ):
            return entry
    return None


def describe() -> dict:
    """{"library", "version", "kernel", "path", "reason"} for this process, asked of the library itself."""
    if sys.platform == "darwin":
        return {"library": "Accelerate", "version": "", "kernel": "", "path": "", "reason": "macOS"}
    path = loaded_library()
    reason = os.environ.get("QMD_BLAS_REASON", "")
    if path is None:
        return {
            "library": "bundled reference BLAS (mlx[cpu])",
            "version": "",
            "kernel": "",
            "path": "",
            "reason": reason or "slow; install libopenblas0-pthread",
        }
    lib = ctypes.CDLL(path)  # already mapped: the same handle, no second initialisation
    info = {"library": Path(path).name, "version": "", "kernel": "", "path": path, "reason": reason}
    config = _symbol(lib, "openblas_get_config", "scipy_openblas_get_config")
    if config is not None:
        config.restype = ctypes.c_char_p
        words = config().decode().split()  # "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Haswell ..."
        info.update(library="OpenBLAS", version=words[1] if len(words) > 1 else "")
        corename = _symbol(lib, "openblas_get_corename", "scipy_openblas_get_corename")
        if corename is not None:
            corename.restype = ctypes.c_char_p
            info["kernel"] = corename().decode()
        return info
    mkl_version = _symbol(lib, "mkl_get_version_string", "MKL_Get_Version_String")
    if mkl_version is not None:
        buf = ctypes.create_string_buffer(512)
        mkl_version(buf, len(buf))
        text = buf.value.decode(errors="replace")  # "Intel(R) oneAPI Math Kernel Library Version 2026.2 ... for
        # Intel(R) 64 architecture applications" - the instruction set comes from mkl_get_version's Processor field
        version = text.split("Version", 1)[-1].split()[0].split("-")[0] if "Version" in text else ""
        info.update(library="MKL", version=version)
        info["kernel"] = _mkl_processor(lib)
    return info


def _mkl_processor(lib) -> str:
    class MKLVersion(ctypes.Structure):
        _fields_ = [
            ("MajorVersion", ctypes.c_int),
            ("MinorVersion", ctypes.c_int),
            ("UpdateVersion", ctypes.c_int),
            ("PatchVersion", ctypes.c_int),
            ("ProductStatus", ctypes.c_char_p),
            ("Build", ctypes.c_char_p),
            ("Processor", ctypes.c_char_p),
            ("Platform", ctypes.c_char_p),
        ]

    get = _symbol(lib, "mkl_get_version", "MKL_Get_Version")
    if get is None:
        return ""
    v = MKLVersion()
    get(ctypes.byref(v))
    text = (v.Processor or b"").decode(errors="replace")
    return text.split("(Intel(R) ")[-1].rstrip(")") if "(Intel(R) " in text else text


def summary(info: dict | None = None, reason: bool = True) -> str:
    """One line for banners and reports: `OpenBLAS 0.3.21 Cooperlake (chosen: ...)`; reason=False
    leaves out the parenthesis (benchmark rows)."""
    info = info or describe()
    head = " ".join(x for x in (info["library"], info["version"], info["kernel"]) if x)
    return f"{head} ({info['reason']})" if reason and info.get("reason") else head


# ----------------------------------------------------------------------------
# CLI


def main(argv) -> int:
    if len(argv) >= 2 and argv[0] == "--probe":
        print(json.dumps(_probe_here(argv[1], int(argv[2]) if len(argv) > 2 else PROBE_SIZE)))
        return 0
    cpu = cpu_info()
    lib = os.environ.get("QMD_BLAS") or find_openblas()
    report = {"cpu": cpu.describe(), "library": lib}
    if lib and not os.environ.get("QMD_BLAS"):
        report["decision"] = choose_kernel(lib, cpu, use_cache=False)
    if "--json" in argv:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:10} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
