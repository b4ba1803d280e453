"""The BLAS kernel is checked, chosen from the CPU flags and reported (blas.py, runtime.ensure_fast_blas)."""

import json
import sys

import pytest
from conftest import doctor

import blas

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux-only")

# /proc/cpuinfo flag sets as these CPUs report them (trimmed to the vector-ISA flags that matter, plus
# a few neighbours so that nothing is keyed on a short list).
BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm"
SSE4 = BASE + " pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 popcnt aes"
AVX2 = SSE4 + " avx f16c fma bmi1 avx2 bmi2 movbe"
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl"
CPUS = {
    "amd-zen2": ("AuthenticAMD", 23, 49, AVX2 + " sha_ni clzero"),
    "amd-zen3": ("AuthenticAMD", 25, 1, AVX2 + " sha_ni vaes vpclmulqdq"),
    "amd-zen4": ("AuthenticAMD", 25, 17, AVX512 + " avx512ifma avx512vbmi avx512_bf16 avx512_vnni gfni"),
    "amd-zen5": ("AuthenticAMD", 26, 2, AVX512 + " avx512ifma avx512vbmi avx512_bf16 avx_vnni avx512_vp2intersect"),
    "intel-skylake-sp": ("GenuineIntel", 6, 85, AVX512 + " avx512_vnni clwb"),
    "intel-sapphire-rapids": ("GenuineIntel", 6, 143, AVX512 + " avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"),
    "intel-emerald-rapids": ("GenuineIntel", 6, 207, AVX512 + " avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"),
    "intel-haswell-avx2-only": ("GenuineIntel", 6, 60, AVX2),
    "intel-atom-no-avx": ("GenuineIntel", 6, 77, SSE4),
}


def cpu(name: str) -> blas.CpuInfo:
    vendor, family, model, flags = CPUS[name]
    text = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
    text += f"model name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\nvendor_id\t: other\n"
    return blas.cpu_info(text)


def test_cpuinfo_is_parsed_from_the_first_processor():
    c = cpu("intel-emerald-rapids")
    assert (c.vendor, c.family, c.model) == ("GenuineIntel", 6, 207)
    assert "amx_tile" in c.flags and blas.isa_tier(c.flags) == 3


@pytest.mark.parametrize(
    "name, tier",
    [
        ("amd-zen2", 2),
        ("amd-zen3", 2),
        ("amd-zen4", 3),
        ("amd-zen5", 3),
        ("intel-skylake-sp", 3),
        ("intel-sapphire-rapids", 3),
        ("intel-emerald-rapids", 3),
        ("intel-haswell-avx2-only", 2),
        ("intel-atom-no-avx", 0),
    ],
)
def test_isa_tier_follows_the_flags_not_the_model(name, tier):
    assert blas.isa_tier(cpu(name).flags) == tier


@pytest.mark.parametrize(
    "name, picked, expected",
    [
        # the machine: Debian's OpenBLAS 0.3.21 runs Prescott on an Emerald Rapids Xeon
        ("intel-emerald-rapids", "Prescott", ["Cooperlake", "SkylakeX", "Haswell", "Zen", "Sandybridge"]),
        ("intel-sapphire-rapids", "Haswell", ["Cooperlake", "SkylakeX"]),
        ("intel-skylake-sp", "Nehalem", ["SkylakeX", "Haswell", "Zen", "Sandybridge"]),  # no bf16: no Cooperlake
        ("amd-zen5", "Haswell", ["Cooperlake", "SkylakeX"]),
        ("amd-zen4", "Barcelona", ["Cooperlake", "SkylakeX", "Haswell", "Zen", "Sandybridge"]),
        ("amd-zen3", "Barcelona", ["Haswell", "Zen", "Sandybridge"]),  # AVX2: never an AVX-512 kernel
        ("amd-zen2", "Sandybridge", ["Haswell", "Zen"]),
        ("intel-haswell-avx2-only", "Core2", ["Haswell", "Zen", "Sandybridge"]),
        # already the best tier, or nothing better to run: leave OpenBLAS's choice alone
        ("amd-zen4", "Cooperlake", []),
        ("intel-skylake-sp", "SkylakeX", []),
        ("amd-zen2", "Zen", []),
        ("intel-atom-no-avx", "Prescott", []),
        # a kernel name we do not know (ARM, or a newer OpenBLAS's own) is never second-guessed
        ("amd-zen5", "NeoverseN1", []),
    ],
)
def test_better_kernels_are_offered_only_when_openblas_picked_a_weaker_one(name, picked, expected):
    assert blas.kernel_candidates(cpu(name).flags, picked) == expected


def fake_probe(speeds, known=None):
    """A stand-in for blas.probe: the library's own pick is `speeds[None]`'s kernel; `known` lists the
    kernels this (fake) OpenBLAS knows - an unknown OPENBLAS_CORETYPE falls back to its own pick."""
    calls = []

    def probe(path, coretype=None, n=blas.PROBE_SIZE, timeout=60):
        calls.append(coretype)
        own, own_gflops = speeds[None]
        if coretype is None or (known is not None and coretype not in known):
            return {"kernel": own, "ok": True, "gflops": own_gflops}
        return {"kernel": coretype, "ok": True, "gflops": speeds[coretype]}

    return probe, calls


@pytest.fixture
def lib(tmp_path, monkeypatch):
    monkeypatch.setenv("QMD_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "libopenblas.so.0"
    path.write_bytes(b"not really a library")
    return str(path)


def test_a_generic_kernel_is_replaced_by_the_fastest_measured_one(lib, monkeypatch):
    # the measurements: Prescott 28 GFLOP/s, SkylakeX 167
    speeds = {None: ("Prescott", 28.0), "Cooperlake": 160.0, "SkylakeX": 167.0, "Haswell": 120.0}
    speeds |= {"Zen": 110.0, "Sandybridge": 60.0}
    probe, calls = fake_probe(speeds)
    monkeypatch.setattr(blas, "probe", probe)
    d = blas.choose_kernel(lib, cpu("intel-emerald-rapids"))
    assert d["coretype"] == "SkylakeX" and d["default"] == "Prescott"
    assert d["reason"].startswith("chosen: this OpenBLAS picked Prescott (SSE) for GenuineIntel family 6 model 207")
    assert "SkylakeX 167" in d["reason"]
    assert calls == [None, "Cooperlake", "SkylakeX", "Haswell", "Zen", "Sandybridge"]
    # cached per library file and CPU: no second probe
    assert blas.choose_kernel(lib, cpu("intel-emerald-rapids")) == d
    assert len(calls) == 6
    assert json.loads(blas.cache_file().read_text())


def test_kernels_the_library_does_not_know_are_skipped(lib, monkeypatch):
    speeds = {None: ("Prescott", 28.0), "Haswell": 120.0, "Zen": 118.0, "Sandybridge": 60.0}
    probe, _ = fake_probe(speeds, known={"Haswell", "Zen", "Sandybridge"})  # an OpenBLAS older than SkylakeX
    monkeypatch.setattr(blas, "probe", probe)
    d = blas.choose_kernel(lib, cpu("intel-skylake-sp"))
    assert d["coretype"] == "Haswell"
    assert "SkylakeX" not in d["probes"]


def test_the_library_choice_is_kept_unless_a_candidate_is_clearly_faster(lib, monkeypatch):
    probe, _ = fake_probe({None: ("Haswell", 220.0), "Cooperlake": 225.0, "SkylakeX": 226.0})  # within 5%
    monkeypatch.setattr(blas, "probe", probe)
    d = blas.choose_kernel(lib, cpu("amd-zen5"))
    assert d["coretype"] is None and d["reason"].startswith("kept: this OpenBLAS picked Haswell (AVX2)")


def test_the_users_own_choices_win(lib, monkeypatch):
    probe, calls = fake_probe({None: ("Cooperlake", 410.0), "Haswell": 220.0})
    monkeypatch.setattr(blas, "probe", probe)
    monkeypatch.setattr(blas, "find_openblas", lambda: lib)
    zen5 = cpu("amd-zen5")
    monkeypatch.setattr(blas, "cpu_info", lambda text=None: zen5)
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    path, env, reason = blas.plan()
    assert (path, env) == (lib, {"OPENBLAS_THREAD_TIMEOUT": blas.THREAD_TIMEOUT})  # the user's kernel runs ...
    assert reason.startswith("OPENBLAS_CORETYPE=Haswell set in the environment: an AVX2 kernel")
    assert "Cooperlake measured 410; unset it" in reason  # ... and they are told what it costs
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "20")
    assert blas.plan()[1] == {}  # the user's own thread timeout too
    monkeypatch.setenv("QMD_BLAS", lib)
    assert blas.plan() == (lib, {}, "chosen by the user (QMD_BLAS)")
    monkeypatch.setenv("QMD_BLAS", lib + ".missing")
    assert blas.plan()[0] is None


@linux_only
def test_the_real_library_is_probed_and_forced_kernels_are_reported():
    lib = blas.find_openblas()
    assert lib, "make setup installs libopenblas0-pthread"
    own = blas.probe(lib)
    assert own["ok"] and own["gflops"] > 1 and own["kernel"]
    forced = blas.probe(lib, "Prescott", n=256)  # SSE3: every x86-64 CPU runs it
    assert forced["ok"] and forced["kernel"] == "Prescott"


@linux_only
def test_a_script_banner_names_library_version_kernel_and_reason():
    report = doctor({"OPENBLAS_CORETYPE": None})
    name, version, kernel = report["blas"].split(" (")[0].split()
    assert name == "OpenBLAS" and version.count(".") == 2
    tier = blas.isa_tier(blas.cpu_info().flags)
    # never a generic kernel on a CPU that can do better: OpenBLAS's own pick was good, or ours replaced it
    assert blas.KERNEL_TIER.get(kernel.lower(), tier) >= tier or "kept:" in report["blas"], report
    assert "OpenBLAS's own choice" in report["blas"] or "chosen:" in report["blas"] or "kept:" in report["blas"]

    report = doctor({"OPENBLAS_CORETYPE": "Prescott"})
    assert report["blas"].startswith("OpenBLAS") and " Prescott (OPENBLAS_CORETYPE=Prescott set" in report["blas"]
