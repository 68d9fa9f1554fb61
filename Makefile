# Two commands matter to a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# the demo needs only the package; tests, lint and benchmarks add the development tools
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
ANSIBLE := $(VENV)/.installed-ansible
PYTEST_ARGS ?=
# make test runs the suite on TEST_WORKERS processes (pytest-xdist; 0: in make's own process).
# --dist loadfile keeps each test file on one worker, so a server, broker or browser a module
# starts once is started once; coverage from every worker is combined into one report.
TEST_WORKERS ?= 2

.PHONY: demo test lint format bench test-system image test-image test-image-boot schema docs dist clean

$(BASE): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77" wheel
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# the system tests' provisioning tools (Ansible, its linters) on top of the development tools
$(ANSIBLE): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,ansible]'
	touch $(ANSIBLE)

## demo: run the whole pipeline on the bundled sample clip with the embedded defaults
demo: $(BASE)
	$(VENV)/bin/spyoncino run
	@echo
	@echo "Look at: var/spyoncino/  (media per camera and day; events.sqlite3 is the index)"
	@echo "Browse:  .venv/bin/spyoncino run --forever, then http://127.0.0.1:8080/ (password in var/spyoncino/status_page.password)"
	@echo "Alerts:  SPYONCINO_TELEGRAM__TOKEN=... SPYONCINO_TELEGRAM__CHAT_IDS='[<your chat id>]' make demo"

## test: install and run the test suite with coverage (system tests: make test-system)
test: $(STAMP)
	$(PY) -m pytest -rs -m "not system" -n $(TEST_WORKERS) --dist loadfile --cov=spyoncino --cov-report=term --cov-report=json:.coverage.json $(PYTEST_ARGS)

## lint: ruff (lint + format check) and mypy --strict on the package
lint: $(STAMP)
	$(VENV)/bin/ruff check spyoncino tests bench
	$(VENV)/bin/ruff format --check spyoncino tests bench
	$(VENV)/bin/mypy spyoncino

format: $(STAMP)
	$(VENV)/bin/ruff check --fix spyoncino tests bench
	$(VENV)/bin/ruff format spyoncino tests bench

## bench: speed and memory benchmarks; JSON results in bench/results/
bench: $(STAMP)
	@mkdir -p bench/results
	@set -e; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

## test-system: real systemd in systemd-nspawn (root): role (and --check), watchdog, A/B updates
## with faults; every package extra in a venv; the Pi's constrained venv on arm64 under qemu-user
## (about 12 min, plus 1.5 min for arm64 and 1 min for the extras once cached;
## SPYONCINO_FAULT_KILLS=30 SPYONCINO_FAULT_POWEROFFS=10 for the full fault counts)
test-system: $(ANSIBLE)
	$(PY) -m pytest -m "not system" tests/system -q $(PYTEST_ARGS)
	bash tests/system/build_rootfs.sh >/dev/null
	$(PY) -m pytest -m system tests/system -q $(PYTEST_ARGS)

## image: the SD-card image dist/spyoncino-<version>-rpi-arm64.img.xz (root; see image/README.md)
image: $(STAMP)
	PYTHON=$(abspath $(PY)) bash image/build.sh

## test-image: build the image, boot it in QEMU: first boot, service, events, power cycle, idle writes (root)
IDLE_S ?= 300
test-image: image
	@$(MAKE) --no-print-directory test-image-boot

# test-image's boots alone, on the image the last `make image` left in build/image
# (.ci/run builds it beside the system tests, then boots it)
test-image-boot: $(STAMP)
	SPYONCINO_IMAGE_NO_BUILD=1 SPYONCINO_IMAGE_IDLE_S=$(IDLE_S) $(PY) -m pytest -m image tests/image -q -s $(PYTEST_ARGS)

## schema: JSON Schemas of config.yaml and every payload into ./schema
schema: $(STAMP)
	$(VENV)/bin/spyoncino schema --out schema

## docs: regenerate docs/configuration.md from the config schema
docs: $(STAMP)
	$(PY) -m spyoncino.cli.docgen > docs/configuration.md

## dist: the wheel a board installs, its dependencies (dist/wheelhouse) and the release lock
## inside the wheel (spyoncino/data/constraints/release.txt: every dependency with its sha256,
## which the updater installs with pip --require-hashes; docs/updates.md). Needs the index
## (PyPI or PIP_INDEX_URL / PIP_FIND_LINKS). DIST_WHEELHOUSES adds other platforms' wheelhouses
## to the lock, e.g. DIST_WHEELHOUSES=dist/wheelhouse-arm64@aarch64-cp311
DIST_EXTRAS ?= mqtt
DIST_WHEELHOUSES ?=
LOCK := spyoncino/data/constraints/release.txt
dist: $(BASE)
	rm -rf dist/spyoncino-*.whl dist/wheelhouse $(LOCK)
	$(PY) -m pip wheel --quiet --no-build-isolation -w dist/wheelhouse '.[$(DIST_EXTRAS)]'
	rm -f dist/wheelhouse/spyoncino-*.whl
	$(PY) -m spyoncino.updater lock --extras '$(DIST_EXTRAS)' --out $(LOCK) \
	  --wheelhouse dist/wheelhouse $(foreach w,$(DIST_WHEELHOUSES),--wheelhouse $(w))
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	rm -f $(LOCK) build/lib/$(LOCK)
	@ls dist/spyoncino-*.whl

clean:
	rm -rf $(VENV) var dist .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.json schema
