# Two commands do all set-up on a fresh clone (CPU-only Linux, Python >= 3.11):
#   make run    create .venv, install, run the default workflow (the offline demo)
#   make test   create .venv, install, run the test suite
#   make long-coreset   issue #3's longer coreset schedule on the demo data (results/long-coreset/, ~30 min on 2 cores)
VENV ?= .venv
CORES ?= 2
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install run test long-coreset clean-results

install: $(VENV)/.installed

# torch and torchvision are pinned here (a pair that imports together on our CPU machines);
# pyproject.toml keeps loose ranges for users who bring their own CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c "import torch, torchvision, snakemake, mlflow, mlxtend"
	touch $@

# The HTML report (tables and figures with captions) is rebuilt after each run; it is not set in
# the profile because --report-after-run there would also make every dry run fail.
run: install
	snakemake --cores $(CORES)
	snakemake --report results/report.html

long-coreset: install
	snakemake --cores $(CORES) --configfile config/config.yaml config/demo_long_coreset.yaml

# One pytest worker per core: most tests wait on subprocesses (task jobs, snakemake, Slurm), so two workers on
# two cores take ~2/3 of the serial time (benchmarks/README.md, "Test suite: serial and with two workers").
test: install
	$(PY) -m pytest -q -n $(CORES)

clean-results:
	rm -rf results .snakemake
