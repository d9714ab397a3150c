# Two entry points: `make run` (the default study) and `make test`.
# Both create .venv if missing and install the pinned dependencies (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake -c2 --workflow-profile workflow/profiles/default

test: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

lint: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake
