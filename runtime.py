"""Shared plumbing for every script: fast BLAS on Linux, device and dtype, model loading, configs,
atomic writes.

Fast BLAS. `mlx[cpu]` on Linux ships a reference BLAS (~7 GFLOP/s); MLX's float32 matmuls call
`cblas_sgemm`, so preloading Debian's OpenBLAS makes them 30-60x faster. A library can only be
preloaded before the process starts, so `ensure_fast_blas()` - called at the top of every entry
point, before MLX is imported - re-executes the same command with LD_PRELOAD set, plus the
OPENBLAS_CORETYPE that blas.py chose when OpenBLAS's own kernel is weaker than the CPU allows, and
OPENBLAS_THREAD_TIMEOUT=10 (idle OpenBLAS threads sleep instead of spinning against MLX's threads),
and on x86-64 the PATH and TMPDIR of cpujit.py (MLX's run-time kernels compiled for this CPU).
`blas.py` decides, explains and reports (`blas_in_use()`, `environment()`); QMD_FAST_BLAS=0 opts
out (the benchmarks use it to measure the bundled BLAS), QMD_BLAS=/path/lib.so picks another CBLAS.
macOS uses Accelerate through Metal/MLX and nothing changes there.

Only float32 goes through BLAS (bfloat16 matmul stays on MLX's own slow CPU kernels), so on the CPU
the scripts compute in float32: `compute_dtype()`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

# ----------------------------------------------------------------------------
# Fast BLAS (the choice itself lives in blas.py)


def find_openblas() -> str | None:
    import blas

    return blas.find_openblas()


def ensure_fast_blas() -> None:
    """On Linux, re-execute this process with the chosen BLAS preloaded, once, before MLX is imported.

    blas.plan() picks the library (Debian's OpenBLAS, or the user's QMD_BLAS) and, where OpenBLAS's
    own kernel choice is weaker than the CPU, the OPENBLAS_CORETYPE that measured fastest; the reason
    travels to the new process in QMD_BLAS_REASON for banners and reports."""
    if not sys.platform.startswith("linux") or os.environ.get("QMD_FAST_BLAS", "1") == "0":
        return
    preloaded = [p for p in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if os.environ.get("QMD_BLAS_REASON") is not None and any(Path(p).exists() for p in preloaded):
        return  # the re-executed process (or a child that inherited its environment): already decided
    if "mlx" in sys.modules or "mlx.core" in sys.modules:
        print("warning: MLX was imported before ensure_fast_blas(); running without OpenBLAS", file=sys.stderr)
        return
    import blas

    lib, env, reason = blas.plan()
    if lib is None:
        if not os.environ.get("QMD_BLAS_WARNED"):
            os.environ["QMD_BLAS_WARNED"] = "1"
            print(
                f"warning: {reason}; MLX will use its bundled reference BLAS (~30x slower on CPU).\n"
                "         Install it with: sudo apt-get install libopenblas0-pthread  (make setup does this)",
                file=sys.stderr,
            )
        return
    if "unset it" in reason:  # the user's OPENBLAS_CORETYPE is slower than what this CPU can run
        print(f"warning: BLAS: {reason}", file=sys.stderr)
    os.environ.update(env)
    os.environ["QMD_BLAS_REASON"] = reason
    import cpujit

    os.environ.update(cpujit.plan()[0])  # MLX's fused CPU kernels built for this CPU (see cpujit.py)
    if lib not in preloaded:
        os.environ["LD_PRELOAD"] = ":".join([lib, *preloaded])
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv is the exact command line (python -m ..., a script, a console entry point)
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def blas_in_use() -> str:
    """Which BLAS this process runs MLX matmuls on: library, version, kernel and why."""
    import blas

    return blas.summary()


def cpujit_in_use() -> str:
    """Which compiler builds MLX's fused CPU kernels in this process (cpujit.py)."""
    import cpujit

    return cpujit.summary()


def environment() -> dict:
    """Where a run ran, for metrics.jsonl headers and eval reports: MLX version, device, CPU, BLAS."""
    import mlx.core as mx

    import blas

    return {
        "mlx": mx.__version__,
        "device": device_name(),
        "cpu": blas.cpu_info().describe() if sys.platform.startswith("linux") else sys.platform,
        "blas": blas_in_use(),
        "cpu_jit": cpujit_in_use(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def matmul_gflops(n: int = 1024, repeats: int = 5, dtype: str = "float32") -> float:
    """Measured n x n matmul throughput on MLX's default device (median of `repeats`)."""
    import mlx.core as mx

    dt = getattr(mx, dtype)
    a = mx.random.normal((n, n)).astype(dt)
    b = mx.random.normal((n, n)).astype(dt)
    mx.eval(a @ b)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(a @ b)
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e9


def device_name() -> str:
    import mlx.core as mx

    dev = mx.default_device()
    if dev.type == mx.gpu:
        backend = "Metal" if sys.platform == "darwin" else "CUDA"
        return f"gpu ({backend})"
    return "cpu"


def on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device().type == mx.cpu


_ROW_STREAMS: list = []


def row_streams() -> list:
    """Streams to spread (rows x vocabulary)-sized elementwise work over the cores; [] off the CPU.

    MLX's CPU backend runs each stream's non-BLAS ops (exp, logsumexp, random sampling) on a single
    thread, so a softmax over a 49k-152k vocabulary uses one core however many there are: with two
    streams, exp over (256, 151936) floats takes 0.27 s instead of 0.54 s on 2 cores. Matmuls go
    through BLAS, which is multi-threaded already, and GPUs parallelise everything themselves.
    """
    import mlx.core as mx

    if not on_cpu():
        return []
    if not _ROW_STREAMS:
        n = max(1, min(os.cpu_count() or 1, 8))
        _ROW_STREAMS.extend(mx.new_stream(mx.cpu) for _ in range(n))
    return _ROW_STREAMS


def rowwise(fn, *arrays):
    """fn(*arrays) with the arrays split along axis 0 across row_streams(), results concatenated.

    fn must treat rows independently; it may return an array or a tuple of arrays.
    """
    import mlx.core as mx

    streams = row_streams()
    rows = arrays[0].shape[0]
    if len(streams) < 2 or rows < 2:
        return fn(*arrays)
    k = min(len(streams), rows)
    bounds = [rows * i // k for i in range(k + 1)]
    parts = []
    for i in range(k):
        with mx.stream(streams[i]):
            parts.append(fn(*(a[bounds[i] : bounds[i + 1]] for a in arrays)))
    if isinstance(parts[0], tuple):
        return tuple(mx.concatenate([p[j] for p in parts], axis=0) for j in range(len(parts[0])))
    return mx.concatenate(parts, axis=0)


def compute_dtype():
    """float32 on CPU (only float32 reaches BLAS), bfloat16 on GPUs."""
    import mlx.core as mx

    return mx.float32 if on_cpu() else mx.bfloat16


def doctor_report(quick: bool = False) -> dict:
    """Facts about this machine's MLX set-up, for `train.py doctor` and bug reports."""
    import mlx.core as mx

    import blas

    report = {
        "mlx": mx.__version__,
        "device": device_name(),
        "platform": sys.platform,
        "blas": blas_in_use(),
        "cpu_jit": cpujit_in_use(),
        "cpu": blas.cpu_info().describe(),
        "compute_dtype": str(compute_dtype()).replace("mlx.core.", ""),
        "LD_PRELOAD": os.environ.get("LD_PRELOAD", ""),
    }
    n = 512 if quick else 1024
    report["matmul_gflops_float32"] = round(matmul_gflops(n, dtype="float32"), 1)
    if not quick:
        report["matmul_gflops_bfloat16"] = round(matmul_gflops(n, repeats=3, dtype="bfloat16"), 1)
    return report


# ----------------------------------------------------------------------------
# Files


def umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, data) -> None:
    """Write text or bytes to `path` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp creates 0600; an ordinary write honours the umask
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------
# Run folders: never write into (or delete) an input, and --overwrite without losing the old run


def check_output_folder(out, inputs: dict, flag: str = "--adapter-path") -> None:
    """Refuse an output folder that is, contains or lies inside one of the run's inputs.

    `inputs` maps a name ("SFT adapter", "data", "base model") to a path (None or a Hub id that is not
    a local path is skipped). A run writes adapters.safetensors, adapter_config.json, config.yaml and
    metrics.jsonl into its folder and --overwrite clears them: pointed at the SFT adapter, or at a folder
    holding it, that would replace or delete the very files the run trains on.
    """
    o = Path(out).expanduser().resolve()
    for name, p in inputs.items():
        if p is None or str(p).startswith("pkg:") or not Path(p).expanduser().exists():
            continue
        i = Path(p).expanduser().resolve()
        if o == i:
            how = "is"
        elif i.is_relative_to(o):
            how = "contains"
        elif o.is_relative_to(i):
            how = "lies inside"
        else:
            continue
        suggestion = Path(out) / "run" if how == "contains" else i.parent / f"{i.name}-run"
        raise ConfigError(
            f"{flag} {out} {how} the {name} {p}: the run writes its adapters, config and metrics into that "
            f"folder and --overwrite clears them, so it must be a folder of its own (e.g. {flag} {suggestion})"
        )


@contextmanager
def interruptible(echo=print, what: str = "step", flag: dict | None = None):
    """Ctrl-C as a request: the first one sets flag["flag"] (the loop finishes its `what`, saves a
    checkpoint and stops), a second one aborts at once. The old handler is put back on exit."""
    flag = {"flag": False} if flag is None else flag

    def on_sigint(signum, frame):
        if flag["flag"]:
            raise KeyboardInterrupt
        flag["flag"] = True
        echo(f"\ninterrupt: finishing this {what}, then saving a checkpoint (Ctrl-C again to abort)")

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old_handler)


def open_run_folder(cfg, inputs: dict, replaced, resume: bool, overwrite: bool, saved_config, resume_keys, echo=print):
    """The checks every run makes on its --adapter-path before it loads anything big; returns the
    checkpoint to resume from (None: a fresh start).

    The folder must not be, hold or lie inside an input (check_output_folder); an --overwrite cut
    short is recovered and a killed run's partial writes removed; a folder holding a run needs
    --resume or --overwrite; a --resume must keep `resume_keys` as `saved_config()` (the run's own
    config, read only when there is a checkpoint) has them.
    """
    out = Path(cfg["adapter_path"])
    check_output_folder(out, inputs)
    replaced.recover(echo)
    clean_partial_writes(out)  # a run killed mid-write: its temp files and unfinished checkpoint
    existing = latest_checkpoint(out) if out.exists() else None
    if existing and not resume and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({existing.name}). Use --resume to continue it, --overwrite to start "
            "over (the old run is replaced once the new one has a checkpoint), or --adapter-path for a new folder."
        )
    if resume and existing:
        saved = saved_config()
        changed = [k for k in resume_keys if saved is not None and saved.get(k) != cfg.get(k)]
        if changed:
            raise ConfigError(
                f"cannot resume {out}: {', '.join(f'{k} was {saved.get(k)!r}, now {cfg.get(k)!r}' for k in changed)}"
            )
    return existing


class ReplacedRun:
    """--overwrite that keeps the old run until the new one has written its first checkpoint.

    move_aside() moves the old run's own outputs (only the names given: files that are not a run's
    outputs stay where they are) into `out/.replaced-run/`; commit() deletes them once the new run has
    a checkpoint; restore() puts them back if the new run fails first. A process killed in between
    leaves the folder behind: recover() - called before every run in that folder - restores it when
    no complete checkpoint was written since, and deletes it when one was.
    """

    ASIDE = ".replaced-run"
    DONE = ".moved"  # written once every old output is aside: the new run may start writing

    def __init__(self, out, names):
        self.out = Path(out)
        self.names = list(names)
        self.aside = self.out / self.ASIDE
        self.trash = self.out / (self.ASIDE + ".delete")
        self.active = False

    def recover(self, echo=print) -> None:
        shutil.rmtree(self.trash, ignore_errors=True)  # a commit that was cut short
        if not self.aside.is_dir():
            return
        if not (self.aside / self.DONE).exists():  # cut short while moving: nothing new was written yet
            for moved in self.aside.iterdir():
                os.replace(moved, self.out / moved.name)
            self.aside.rmdir()
            return
        if latest_checkpoint(self.out) is not None:  # the new run got as far as a checkpoint: it stands
            self._drop_aside()
            return
        self._put_back()
        echo(f"{self.out}: an --overwrite run was stopped before its first checkpoint; the previous run is restored")

    def move_aside(self) -> None:
        present = [n for n in self.names if (self.out / n).exists() or (self.out / n).is_symlink()]
        if not present:
            return
        self.aside.mkdir(parents=True, exist_ok=True)
        for name in present:
            os.replace(self.out / name, self.aside / name)
        (self.aside / self.DONE).touch()
        self.active = True

    def commit(self) -> None:
        """The new run has a complete checkpoint: the old outputs go."""
        if self.active:
            self._drop_aside()
            self.active = False

    def restore(self) -> bool:
        """Put the old run back (the new run's outputs of the same names go). True if it did."""
        if not self.active:
            return False
        self._put_back()
        self.active = False
        return True

    def _drop_aside(self) -> None:
        os.replace(self.aside, self.trash)  # one rename, so a kill mid-delete cannot look like a move
        shutil.rmtree(self.trash, ignore_errors=True)

    def _put_back(self) -> None:
        for name in self.names:  # the new run's outputs go, whether or not the old run had them
            target = self.out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        (self.aside / self.DONE).unlink()
        for moved in self.aside.iterdir():
            os.replace(moved, self.out / moved.name)
        self.aside.rmdir()


# ----------------------------------------------------------------------------
# Configs: YAML in configs/, CLI flags override, unknown keys are errors


class ConfigError(ValueError):
    pass


class Key:
    """The type and allowed range of one config key: Key(int, lo=1), Key(float, lo=0, lo_open=True),
    Key(str, choices=(...)), Key(list), Key(bool); `also` lists values allowed outside the range (-1:
    "all"), `null` allows None. check() returns the value (ints given as 3.0 become 3) or raises
    ValueError with the allowed range in words."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, hi_open=False, choices=(), also=(), null=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.choices, self.also, self.null = tuple(choices), tuple(also), null

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(repr, self.choices))
        elif self.kind is list:
            text = "a non-empty list of names"
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "a non-empty string"
        else:
            text = "an integer" if self.kind is int else "a number"
            if self.lo is not None and self.hi is not None:
                text += f" in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text += f" {'>' if self.lo_open else '>='} {self.lo:g}"
            elif self.hi is not None:
                text += f" {'<' if self.hi_open else '<='} {self.hi:g}"
        for v in self.also:
            text += f", or {v!r}"
        if self.null:
            text += ", or null"
        return text

    def check(self, value):
        if value is None and self.null:
            return None
        if value in self.also and not isinstance(value, bool):
            return value
        ok = True
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string: take it as the number meant
                try:
                    value = float(value)
                except ValueError:
                    ok = False
            ok = ok and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        elif self.kind is str:
            ok = isinstance(value, str) and bool(value.strip())
        elif self.kind is list:
            ok = isinstance(value, list | tuple) and bool(value) and all(isinstance(v, str) and v for v in value)
            value = list(value) if ok else value
        if ok and self.choices:
            ok = value in self.choices
        if ok and self.kind in (int, float):
            if self.lo is not None:
                ok = value > self.lo if self.lo_open else value >= self.lo
            if ok and self.hi is not None:
                ok = value < self.hi if self.hi_open else value <= self.hi
        if not ok:
            raise ValueError(self.describe())
        return value


def check_config(cfg: dict, schema: dict, origins: dict | None = None) -> dict:
    """Every key of `cfg` checked against `schema` (key -> Key); returns the checked values.

    A bad value is a ConfigError naming the file or flag it came from, the key, the value and the
    allowed range - raised before any model is loaded, so a typo costs a second, not a model load.
    """
    origins = origins or {}
    out = dict(cfg)
    for key, value in cfg.items():
        spec = schema.get(key)
        if spec is None:
            continue
        try:
            out[key] = spec.check(value)
        except ValueError as exc:
            where = origins.get(key, "config")
            if where.startswith("--"):
                raise ConfigError(f"{where} {value!r}: {key} must be {exc}") from None
            raise ConfigError(f"{where}: {key}: {value!r} is not allowed; {key} must be {exc}") from None
    return out


def load_config(path, defaults: dict, overrides: dict | None = None, schema: dict | None = None) -> dict:
    """Merge `defaults` <- YAML file at `path` (optional) <- `overrides` (CLI flags that were given).

    Every key must be one of `defaults`; a typo is an error naming the file and the closest key. With
    a `schema`, every value is checked for type and range (check_config), naming its file or flag.
    """
    import yaml

    cfg = dict(defaults)
    origins = dict.fromkeys(defaults, "default")
    sources = []
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
        sources.append((str(path), loaded))
    sources.append(("command line", {k: v for k, v in (overrides or {}).items() if v is not None}))
    for where, values in sources:
        for key, value in values.items():
            if key not in defaults:
                close = difflib.get_close_matches(str(key), defaults, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(defaults))})"
                raise ConfigError(f"{where}: unknown config key '{key}'{hint}")
            cfg[key] = value
            origins[key] = flag_name(key) if where == "command line" else where
    return check_config(cfg, schema, origins) if schema else cfg


def config_option(name: str):
    """The --config option of a training command: a YAML file in configs/ whose keys flags override."""
    import click

    return click.option(
        "--config",
        "config_path",
        type=click.Path(),
        default=str(Path(__file__).parent / "configs" / name),
        show_default=f"configs/{name}",
        help="YAML config; flags below override it.",
    )


def config_given() -> bool:
    """Whether --config was given on the command line (its keys then count as explicit on --resume)."""
    import click

    source = click.get_current_context().get_parameter_source("config_path")
    return source is not click.core.ParameterSource.DEFAULT


def run_command(body, usage_errors=()):
    """Run a command's body with the exit statuses scripts rely on: 2 for a usage error (ConfigError,
    ModelError, `usage_errors`), 1 for a diverged run, 130 for a run stopped by Ctrl-C (as a shell
    reports it), 0 otherwise. Each error is one `error: ...` line, no traceback; under mlx.launch it
    names the rank, and a collective that failed because another rank died is exit status 1 too."""
    import click

    import distributed

    try:
        result = body()
    except (ConfigError, ModelError, *usage_errors) as err:
        click.echo(f"error: {distributed.rank_prefix()}{err}", err=True)
        sys.exit(2)
    except TrainingDiverged as err:
        click.echo(f"error: {distributed.rank_prefix()}{err}", err=True)
        sys.exit(1)
    except RuntimeError as err:  # under mlx.launch: a collective failed because a peer died
        if not distributed.lost_peer(err):
            raise
        click.echo(f"error: {distributed.rank_prefix()}{distributed.lost_peer_message(err)}", err=True)
        sys.exit(1)
    if isinstance(result, dict) and result.get("interrupted"):
        sys.exit(130)
    return result


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def load_run_config(
    path,
    path_given: bool,
    defaults: dict,
    flags: dict,
    resume: bool,
    safe_keys,
    out_key: str = "adapter_path",
    schema: dict | None = None,
) -> dict:
    """The config of a run: defaults <- YAML <- flags; with --resume, the run's own saved config.yaml.

    A resumed run continues exactly as it was configured (the default --config file may describe a
    different model or batch size altogether). Flags given on the command line - and the keys of a
    --config file given explicitly - may change `safe_keys` (how long to train, how often to report,
    evaluate and save); any other key that differs from the run's value is refused with the list of
    differences. Without a saved config (nothing to resume) the ordinary config is returned.
    """
    cfg = load_config(path, defaults, flags, schema)
    saved_file = Path(cfg[out_key]) / "config.yaml"
    if not resume or not saved_file.exists():
        return cfg
    saved = load_config(saved_file, defaults, schema=schema)
    explicit = {}
    if path_given and path is not None:
        explicit.update({k: (v, str(path)) for k, v in cfg.items() if k in _file_keys(path)})
    explicit.update({k: (cfg[k], flag_name(k)) for k, v in flags.items() if v is not None})
    safe = set(safe_keys) | {out_key}
    conflicts = [
        f"  {where} {v!r} (the run has {saved[k]!r})"
        if where.startswith("--")
        else f"  {k}: {v!r} in {where} (the run has {saved[k]!r})"
        for k, (v, where) in explicit.items()
        if k not in safe and v != saved[k]
    ]
    if conflicts:
        raise ConfigError(
            f"cannot resume {cfg[out_key]} with different settings:\n"
            + "\n".join(conflicts)
            + f"\nOn --resume only {', '.join(flag_name(k) for k in sorted(safe - {out_key}))} may change. Leave the "
            f"others out (the run's saved {saved_file} supplies them), or start a new run in another --{out_key.replace('_', '-')}."
        )
    return {**saved, **{k: v for k, (v, _) in explicit.items()}, out_key: cfg[out_key]}


def _file_keys(path) -> set:
    import yaml

    return set(yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {})


def save_config(out_dir, cfg: dict, name: str = "config.yaml") -> Path:
    import yaml

    path = Path(out_dir) / name
    atomic_write(path, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


# ----------------------------------------------------------------------------
# Models


class ModelError(RuntimeError):
    pass


class TrainingDiverged(RuntimeError):
    """A NaN/inf loss: the run stops (exit status 1) and keeps its last good adapter."""


def resolve_model(model: str) -> str:
    """A loadable local folder for `model`: a folder, a GGUF file (converted once, cached), a
    pkg:PACKAGE/FILE.gguf shipped in a Python package, or a Hugging Face id (downloaded once)."""
    model = str(model)
    if model.startswith("pkg:") or model.endswith(".gguf"):
        import gguf_io

        try:
            path = gguf_io.resolve_model_file(model) if model.startswith("pkg:") else Path(model).expanduser()
            if not path.exists():
                raise ModelError(f"{path}: GGUF file not found")
            return str(gguf_io.import_gguf(path))
        except (ValueError, FileNotFoundError) as exc:
            raise ModelError(str(exc)) from exc
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelError(
                f"{local}: no config.json here - pass a model folder (MLX or Hugging Face layout) or a .gguf file"
            )
        return str(local)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelError(
            f"model '{model}' is neither a local folder, a .gguf file nor a Hugging Face id (owner/name). "
            "Pass a folder with config.json and *.safetensors, a GGUF file, or an id like Qwen/Qwen3-1.7B."
        )
    return _download(model)


def _download(repo_id: str) -> str:
    """Hub id -> local snapshot folder; fails within seconds, with a way out, when offline."""
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "20")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.tiktoken", "tokenizer.model"]
    try:  # already downloaded: no network needed
        return snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    hint = (
        f"Could not download '{repo_id}' from the Hugging Face Hub ({{why}}). Without network access, pass a local "
        "model instead: --model path/to/folder (config.json + *.safetensors, e.g. from `huggingface-cli download` "
        "on another machine) or --model path/to/model.gguf."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ModelError(hint.format(why="HF_HUB_OFFLINE is set and it is not in the local cache"))
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ModelError(hint.format(why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")) from exc


def load_model(model: str, adapter_path=None, fuse: bool = False):
    """Load (model, tokenizer) from anything resolve_model accepts, optionally with a LoRA adapter.

    An adapter trained on top of another one (grpo.py's, whose adapter_config.json names its
    `parent_adapter`) is loaded by fusing the parent into the base weights first, exactly as it was
    trained. On CPU the floating-point weights are cast to float32 so matmuls reach BLAS.
    fuse=True folds the last adapter in too on the CPU, for inference only (eval): one matmul per
    projection instead of the base's plus LoRA's two (~4% of a 64-row decode step of the demo model).
    Not on GPUs, where the LoRA matmuls are cheap and a quantized base would have to be dequantized.
    """
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load

    chain = adapter_chain(adapter_path) if adapter_path is not None else []
    folder = resolve_model(model)
    model_obj, tokenizer = load(folder)
    _bos_from_config(tokenizer, Path(folder))
    if on_cpu():
        import mlx.core as mx

        model_obj.set_dtype(mx.float32)
    for i, path in enumerate(chain):
        load_adapters(model_obj, str(path))
        if i < len(chain) - 1 or (fuse and on_cpu()):
            fuse_lora(model_obj)
    model_obj.eval()  # LoRA dropout off
    return model_obj, tokenizer


def _bos_from_config(tokenizer, folder: Path) -> None:
    """Give the tokenizer the BOS token its model's config.json names when the tokenizer itself has
    none (Qwen: bos_token null, bos_token_id 151643 in config.json).

    Why: the prompt contract (prompt.py) starts with the BOS token whenever the exported GGUF has one,
    because node-llama-cpp's ChatML wrapper - QMD's - writes it before every prompt. convert.py must
    write a BOS id (llama.cpp would otherwise give a BPE vocabulary id 11, a comma), and it writes this
    one; setting it here makes training, eval and the GGUF agree. Encoding is unaffected: the project
    always encodes with add_special_tokens=False."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    if getattr(hf, "bos_token", None) is not None or not (folder / "config.json").exists():
        return
    bos_id = json.loads((folder / "config.json").read_text()).get("bos_token_id")
    if isinstance(bos_id, list):
        bos_id = bos_id[0] if bos_id else None
    if isinstance(bos_id, int) and 0 <= bos_id < len(hf):
        hf.bos_token = hf.convert_ids_to_tokens(bos_id)


def output_logits(model, hidden):
    """Project hidden states (..., hidden) to logits (..., V) with the model's output layer, tied or
    not: lets training and GRPO apply it to the positions they need instead of all of them."""
    if hasattr(model, "lm_head"):
        return model.lm_head(hidden)
    return model.model.embed_tokens.as_linear(hidden)


def adapter_chain(adapter_path) -> list:
    """[root adapter, ..., adapter_path] following each adapter_config.json's `parent_adapter`."""
    chain, path = [], Path(adapter_path)
    while path is not None:
        cfg_file = path / "adapter_config.json"
        if not cfg_file.exists():
            raise ModelError(
                f"{path}: no adapter_config.json here - is this an adapter folder from train.py or grpo.py?"
            )
        if path in chain or len(chain) > 8:
            raise ModelError(f"{adapter_path}: adapter parents form a loop")
        chain.append(path)
        parent = json.loads(cfg_file.read_text()).get("parent_adapter")
        path = Path(parent) if parent else None
    return chain[::-1]


def adapter_base_model(adapter_path) -> str:
    """The base model an adapter (or its root parent) was trained on, from its adapter_config.json."""
    root = adapter_chain(adapter_path)[0]
    try:
        name = json.loads((root / "adapter_config.json").read_text(encoding="utf-8")).get("base_model")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelError(f"{root}/adapter_config.json: not readable ({exc}); pass --model") from None
    if not name:
        raise ModelError(f"{root}/adapter_config.json does not name its base model; pass --model")
    return str(name)


def lora_parameters(cfg) -> dict:
    """mlx-lm's `lora_parameters` from a run config (rank, alpha, dropout, lora_keys)."""
    return {
        "rank": cfg["rank"],
        "scale": cfg["alpha"] / cfg["rank"],
        "dropout": cfg["dropout"],
        "keys": list(cfg["lora_keys"]),
    }


def add_lora(model, cfg, what: str = "LoRA") -> tuple:
    """Freeze `model` and put LoRA layers on cfg["lora_keys"] of its last cfg["num_layers"] blocks
    (-1: all). Returns (num_layers, trainable parameter count); none created is a ModelError."""
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    n = len(model.layers)
    num_layers = n if cfg["num_layers"] in (-1, None) else min(int(cfg["num_layers"]), n)
    linear_to_lora_layers(model, num_layers, lora_parameters(cfg))
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if n_trainable == 0:
        raise ModelError(f"no {what} layers were created: none of {cfg['lora_keys']} exist in {cfg['model']}")
    return num_layers, n_trainable


def adapter_config(cfg, num_layers: int, extra: dict | None = None) -> dict:
    """adapter_config.json: mlx-lm's keys (what mlx_lm.load reads) plus the run's resolved config and
    `extra` (grpo.py: the parent adapter it sits on)."""
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters(cfg),
        "base_model": cfg["model"],
        **(extra or {}),
        "train_config": cfg,
    }


def fuse_lora(model) -> None:
    """Fold every LoRA layer into its base linear (in memory), as mlx_lm.fuse does."""
    from mlx.utils import tree_unflatten

    fused = [(name, m.fuse(dequantize=True)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))


# ----------------------------------------------------------------------------
# Checkpoints: trainable weights + optimizer state + position, written atomically


def save_safetensors_atomic(path, arrays: dict) -> None:
    import mlx.core as mx

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), arrays)
    os.chmod(tmp, 0o666 & ~umask())  # MLX creates 0644 whatever the umask
    os.replace(tmp, path)


def save_checkpoint(out, model, optimizer, step: int, keep: int, extra: dict | None = None) -> Path:
    """checkpoints/step_N/{adapters,optimizer}.safetensors + state.json (written last: marks it complete),
    and the newest adapters copied to out/adapters.safetensors so the run folder always loads."""
    import shutil

    from mlx.utils import tree_flatten

    out = Path(out)
    adapters = dict(tree_flatten(model.trainable_parameters()))
    ckpt = out / "checkpoints" / f"step_{step:07d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(ckpt / "adapters.safetensors", adapters)
    save_safetensors_atomic(ckpt / "optimizer.safetensors", dict(tree_flatten(optimizer.state)))
    atomic_write_json(ckpt / "state.json", {"step": step, "time": time.time(), **(extra or {})})
    save_safetensors_atomic(out / "adapters.safetensors", adapters)
    for old in sorted((out / "checkpoints").glob("step_*"))[:-keep]:
        (old / "state.json").unlink(missing_ok=True)  # first: a kill mid-delete leaves no "complete" husk
        shutil.rmtree(old, ignore_errors=True)
    return ckpt


# First name part of the temp files atomic_write / save_safetensors_atomic / plot_metrics create in a run
_TEMP_STEMS = frozenset(["adapters", "optimizer", "state", "config", "adapter_config", "metrics", "loss", "grpo"])


def clean_partial_writes(out) -> list:
    """Remove what a process killed mid-write leaves in a run folder: temp files of atomic writes
    (`.NAME.*tmp*`) and checkpoint folders without their state.json (written last). Called before a
    run starts in `out`; returns the paths removed."""
    out = Path(out)
    removed = []
    folders = [out, out / "best", *sorted((out / "checkpoints").glob("step_*"))]
    for folder in folders:
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                if tmp.is_file() and tmp.name.split(".")[1] in _TEMP_STEMS:  # ours only, never a user's file
                    tmp.unlink()
                    removed.append(tmp)
    for ckpt in sorted((out / "checkpoints").glob("step_*")):
        if ckpt.is_dir() and not (ckpt / "state.json").exists():
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    return removed


def latest_checkpoint(out):
    done = [p for p in sorted((Path(out) / "checkpoints").glob("step_*")) if (p / "state.json").exists()]
    return done[-1] if done else None


def load_checkpoint(ckpt, model, optimizer) -> dict:
    """Restore trainable weights and optimizer state; returns the checkpoint's state.json."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    ckpt = Path(ckpt)
    model.load_weights(str(ckpt / "adapters.safetensors"), strict=False)
    optimizer.init(model.trainable_parameters())
    configured_lr = optimizer.state["learning_rate"]
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    # Keep the step count and Adam moments, but the learning rate comes from this run's config
    # (schedules recompute it from the step; a constant rate given on the command line must win).
    optimizer.state["learning_rate"] = configured_lr
    return json.loads((ckpt / "state.json").read_text())


def fit_warmup(warmup: int, updates: int, what: str, echo=print) -> int:
    """The warm-up a run of `updates` optimizer steps can use. A warm-up as long as the run or longer
    would end the run at (or below) the peak learning rate with no decay at all - a short run with the
    shipped 50-step warm-up did exactly that - so it is scaled to a tenth of the run, with a warning."""
    if warmup < updates:
        return warmup
    scaled = updates // 10
    echo(
        f"warning: warmup_steps {warmup} >= the {updates} optimizer steps of this run ({what}); "
        f"using {scaled} warm-up steps (a tenth of the run) so the schedule still runs its course"
    )
    return scaled


class Progress:
    """`label: done/total (rate, ETA h:mm:ss)` lines for long work: the first and the last update and
    at most one every `every` seconds in between, so a ten-minute generation is never silent and a
    fast one prints two lines."""

    def __init__(self, total: int, label: str, echo=print, every: float = 10.0, unit: str = ""):
        self.total, self.label, self.echo, self.every, self.unit = total, label, echo, every, unit
        self.t0 = self.last = time.perf_counter()
        self.shown = False

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if self.shown and done < self.total and now - self.last < self.every:
            return
        self.last, self.shown = now, True
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        self.echo(
            f"{self.label}: {done}/{self.total}{self.unit} ({rate:.2f}/s, {hms(elapsed)} elapsed, ETA {hms(eta)})"
        )


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------
# Run logs: metrics.jsonl and a PNG plot next to every run's outputs


class MetricsLog:
    """Append-only JSONL log of metric dicts (one per report); survives resume by appending."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read(self) -> list:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: skip it, the rest is intact
                continue
        return out

    def truncate_after(self, step: int, key: str = "step") -> None:
        """Drop records past `step` (they belong to work a resumed run will redo)."""
        kept = [r for r in self.read() if r.get(key, 0) <= step]
        atomic_write(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def plot_metrics(records: list, panels: list, path, title: str = "") -> Path | None:
    """Write a PNG with one panel per entry of `panels`: (panel title, [metric keys]), x = "step"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None and "step" in r]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------
# A prefix shared by many rows


class SharedPrompt:
    """Stands in for one layer's KV cache so that many rows attend to a shared prefix that was computed
    once (batch 1) instead of once per row - with gradients, unlike a real cache. GRPO uses it for a
    group's G completions of one prompt, SFT's loss for the prefix every example of a batch starts with.

    First call (the prompt pass): keeps the prompt's keys/values (1, heads, P-1, dim) and attends
    causally within them. Later calls (the completion pass, G rows): returns the prompt's keys and
    values broadcast to G rows, followed by the rows' own. `offset` is the RoPE position of the next
    input, set to P-1 between the two passes; mask "causal" is lower-right aligned in MLX's SDPA, so
    completion position j sees the whole prompt and completion positions <= j.
    """

    def __init__(self):
        self.keys = self.values = None
        self.offset = 0

    def update_and_fetch(self, keys, values):
        import mlx.core as mx

        if self.keys is None:
            self.keys, self.values = keys, values
            return keys, values
        rows = keys.shape[0]
        k = mx.broadcast_to(self.keys, (rows, *self.keys.shape[1:]))
        v = mx.broadcast_to(self.values, (rows, *self.values.shape[1:]))
        return mx.concatenate([k, keys], axis=2), mx.concatenate([v, values], axis=2)

    def make_mask(self, N, return_array=False, window_size=None):
        from mlx_lm.models.base import create_causal_mask

        if window_size is not None:
            raise ValueError("sliding-window attention is not supported by the shared-prompt log-prob pass")
        if return_array:
            return create_causal_mask(N, offset=self.offset)
        return "causal" if N > 1 else None
