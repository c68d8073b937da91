# Two commands (see README):  make demo  -- set up and run the main job;  make test  -- set up and run the tests.
# make docs -- build the documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
LLAMA_CPP ?= llama-cpp-python==0.3.36
# llama.cpp for any x86-64 CPU with AVX2 (not -march=native: a native build crashed at its first decode on
# a CPU whose features the sandbox does not grant), its own thread pool (no OpenMP: torch's libgomp would
# be shared with it), and only the library (no tools, tests, server or multimodal part).
LLAMA_CPP_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_OPENMP=OFF \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow test-all docs bench bench-pair draft

setup: $(VENV)/.installed

# torch is installed first and on its own: a bare "torch" requirement with no torch installed
# would pull the CUDA build and several GB of packages on a CPU-only machine.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	# built from source with the flags above (about 4 min on 2 cores); --no-cache-dir: never a wheel pip
	# cached from a build with other flags
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet --no-cache-dir "$(LLAMA_CPP)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Three prompts the default pair answers well, each beside the LLM alone's answer, with measured times
# (BACKEND=llama.cpp: the same pair from GGUF files on llama.cpp).
BACKEND ?= transformers
demo: setup
	$(BIN)/python examples/demo.py --backend $(BACKEND)

test: setup
	$(BIN)/python -m pytest -m "not slow" --durations=15

test-slow: setup
	$(BIN)/python -m pytest -m slow --durations=15

test-all: setup
	$(BIN)/python -m pytest --durations=15

# The documentation site (README as home page, guide, API reference, generated option tables) into site/;
# strict: a broken link or reference fails it (tests/test_docs_build.py runs the same build).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/python benchmarks/loop_overhead.py --json results/loop_overhead.json

# The speed/quality table of the default pair on the held-out quality suite (about 25 min on 2 CPU cores).
bench-pair: setup
	$(BIN)/python benchmarks/default_pair.py --json results/default_pair.json --plot results/default_pair.png

# Rebuild the shipped draft from scratch in its two stages, on one set of teacher answers (2 CPU cores with
# bf16 matmuls: teacher answers 35-57 min, KL training ~31 min, greedy-token fine-tune ~11 min).
draft: setup
	$(BIN)/rstitch distill --out .distill-work/kl-draft --work-dir .distill-work
	$(BIN)/rstitch distill --out rstitch_engine/drafts/smollm2-135m-instruct --work-dir .distill-work \
		--init-from .distill-work/kl-draft --greedy-weight 1 --steps 400 --lr 2e-4
