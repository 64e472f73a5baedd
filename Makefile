# Every target installs what it needs first (pinned in requirements*.txt).
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-dev test tiny stats

install:
	$(PIP) -r requirements.txt

install-dev:
	$(PIP) -r requirements-dev.txt

## The test suite (CPU, about 13 minutes on 2 cores): two workers, the end-to-end flows on one of them.
test: install-dev
	$(PYTHON) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

## The whole pipeline offline on this machine with the tiny model and data/sample.
tiny: install
	$(PYTHON) pipelines/run_pipeline.py --local --preset tiny --output-dir runs/tiny

## Parameter counts of ruT5-large with the adapters (no download).
stats: install
	$(PYTHON) -m components.stats
