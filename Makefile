# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparsembed demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

# The figures of BENCHMARKS.md, each against its alternative in the same run (long: about an hour on 2 cores).
bench: $(STAMP)
	$(PY) benchmarks/bench_word2vec.py --repeats 2
	$(PY) benchmarks/bench_codec.py --out benchmarks/results
	$(PY) benchmarks/bench_shards.py --out benchmarks/results
	$(PY) benchmarks/bench_exchange.py --nproc 2 --rows 200000 --dim 128 --ids 8192 --steps 40 --json
	$(PY) benchmarks/bench_ddp.py --workers 1 2 --json benchmarks/results/ddp.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
