# Two entry points: `make run` (the default study) and `make test`.
# Both create .venv if missing and install the pinned dependencies (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install system-deps lint clean mutants

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,harness]'
	touch $(STAMP)

# Servers the sharing / cluster tests start on 127.0.0.1 (SSH remote, one-node SLURM).
# Installed only as root with apt; without them those tests skip and say why.
SYSTEM_PKGS := openssh-server openssh-client slurmctld slurmd slurm-client munge
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    ! { [ -x /usr/sbin/sshd ] && [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ]; }; then \
	  echo "installing test servers: $(SYSTEM_PKGS)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PKGS); } >/dev/null 2>&1 || echo "could not install $(SYSTEM_PKGS); their tests will skip"; \
	fi

run: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -c2 --workflow-profile workflow/profiles/default

# Locally the end-to-end checks marked `slow` are left out (pytest -m slow runs them);
# CI (CI=true) runs everything.
PYTEST_SELECT := $(if $(filter true 1,$(CI)),,-m "not slow")
test: install system-deps
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest $(PYTEST_SELECT)

# Mutation testing, by hand (hours on 2 cores, so not in CI): every mutant of the modules
# configured in pyproject's [tool.mutmut]; MUTANTS narrows it, e.g. MUTANTS='clipdistill.vqa.metrics*'.
# Prints the score per module and the survivors (`mutmut show NAME` gives a survivor's diff).
# The expensive session fixtures are built once and reused where no mutant can hide in them
# (tests/fixture_cache.py, docs/mutation.md).
MUTANTS ?=
mutants: install
	PATH=$(CURDIR)/$(BIN):$$PATH CLIPDISTILL_FIXTURE_CACHE=$(CURDIR)/mutants/.fixture-cache \
	    nice $(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/python tests/helpers/mutation_scores.py

lint: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake

# Issue 21: on a CUDA machine, the loss tests on the GPU and the GPU loss benchmark in one go.
.PHONY: gpu-kernels
gpu-kernels:
	bash benchmarks/gpu_kernels.sh

# Issue 24: on a CUDA machine, the smoke study on the GPU in bf16 (next to the CPU run), the loss
# kernels' GPU tests and benchmark, and a table of both runs' stage times and student metrics.
.PHONY: gpu-check
gpu-check: install
	bash benchmarks/gpu_check.sh
