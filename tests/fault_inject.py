"""Run train.py or grpo.py with a SIGKILL in the middle of a checkpoint write (for test_faults.py).

    QMD_FAULT_CHECKPOINT=N:K python tests/fault_inject.py train.py sft ...

During the N-th checkpoint the process writes (atomic temp files, as runtime's writers do) the
checkpoint's adapters (K=1), optimizer state (2), state.json (3) and the run folder's adapters (4);
at write K it leaves half a temp file behind and kills itself, as a power cut or an OOM kill would.
"""

import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402

N, K = map(int, os.environ["QMD_FAULT_CHECKPOINT"].split(":"))
count = {"checkpoint": 0, "write": 0}
real_save_checkpoint = runtime.save_checkpoint
real_safetensors, real_json = runtime.save_safetensors_atomic, runtime.atomic_write_json


def _maybe_die(tmp_name: Path) -> None:
    count["write"] += 1
    if count["checkpoint"] == N and count["write"] == K:
        tmp_name.write_bytes(b"\x00" * 1000)  # what a write cut short leaves
        os.kill(os.getpid(), signal.SIGKILL)


def safetensors(path, arrays):
    path = Path(path)
    _maybe_die(path.with_name(f".{path.stem}.tmp.safetensors"))
    real_safetensors(path, arrays)


def write_json(path, obj):
    path = Path(path)
    _maybe_die(path.with_name(f".{path.name}.k3j5x.tmp"))
    real_json(path, obj)


def save_checkpoint(*args, **kwargs):
    count["checkpoint"] += 1
    count["write"] = 0
    runtime.save_safetensors_atomic, runtime.atomic_write_json = safetensors, write_json
    try:
        return real_save_checkpoint(*args, **kwargs)
    finally:
        runtime.save_safetensors_atomic, runtime.atomic_write_json = real_safetensors, real_json


runtime.save_checkpoint = save_checkpoint
script = sys.argv[1]
sys.argv = sys.argv[1:]
os.chdir(ROOT)
runpy.run_path(str(ROOT / script), run_name="__main__")
