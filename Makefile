# Every target installs what it needs first (pinned in requirements*.txt).
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-dev lint test test-cpu-variants mutation tiny stats

install:
	$(PIP) -r requirements.txt

install-dev:
	$(PIP) -r requirements-dev.txt

## The linter and the formatter's check (ruff; its settings are in pyproject.toml). ruff format fixes the layout.
lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

## The test suite (CPU, 2 cores): three workers, the end-to-end flows on one of them (they spend much of their time
## waiting on agents and the server, which two workers left as idle cores).
test: install-dev
	$(PYTHON) -m pytest -q -n 3 --dist loadgroup --no-loadscope-reorder

## The numeric tests (pytest -m numeric, but those that run the steps) again under the kernels and thread splits of
## other x86-64 CPUs: a float bound that holds only for this machine's summation order fails here, not on the next CI.
CPU_VARIANTS = "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2" \
	"ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2" \
	"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" "OMP_NUM_THREADS=2 MKL_NUM_THREADS=2"
test-cpu-variants: install-dev
	@for variant in $(CPU_VARIANTS); do \
	  echo "CPU variant: $$variant"; \
	  env $$variant $(PYTHON) -m pytest -q -p no:cacheprovider -m "numeric and not runs_steps" || exit 1; \
	done

## The mutation score of one module (make mutation MODULE=components/metrics.py [TESTS="tests/test_metrics.py ..."]);
## the record of every module's score is benchmarks/results/mutation.md.
mutation: install-dev
	$(if $(MODULE),,$(error MODULE is not set: make mutation MODULE=components/metrics.py))
	$(PYTHON) benchmarks/mutation.py $(MODULE) $(if $(TESTS),--tests "$(TESTS)")

## The whole pipeline offline on this machine with the tiny model and data/sample.
tiny: install
	$(PYTHON) pipelines/run_pipeline.py --local --preset tiny --output-dir runs/tiny

## Parameter counts of ruT5-large with the adapters (no download).
stats: install
	$(PYTHON) -m tools.stats
