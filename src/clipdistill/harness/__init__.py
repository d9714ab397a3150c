"""Standard harnesses over clipdistill's models: lmms-eval for the VLMs (`harness.lmms`), MIEB /
mteb for the encoders (`harness.mieb`). Both are an optional extra (`pip install -e '.[harness]'`)
and run offline: their tasks are built here from local splits, nothing is downloaded."""

from __future__ import annotations

import importlib
import importlib.util
import os

from clipdistill.io import ClipdistillError

EXTRA = "pip install -e '.[harness]'"


class HarnessError(ClipdistillError):
    """A harness is missing or cannot score the model."""


def require(module: str, dist: str):
    """Import a harness package, or say in one line which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the harness is there but one of its own imports failed: show that, not a hint
        raise HarnessError(f"{dist} is not installed: {EXTRA} (the 'harness' extra)") from None


def installed(module: str) -> bool:
    """Whether a harness package is importable, without importing it (lmms-eval takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked as sys.modules[name] = None
        return False


def offline() -> None:
    """No hub access from inside a harness: every task is local."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
