"""The project's paths for the tests, in one place: `from paths import ROOT, TINY_CONFIG`.

pyproject.toml's `pythonpath = ["tests"]` puts this folder on `sys.path` (in every pytest process,
whatever the import mode), so tests/ and tests/faults/ import it by name. Constants, not fixtures:
tests use them at import time (parametrize lists, files read once). A module of its own, not
tests/conftest.py: `from conftest import ...` would be ambiguous beside the project's conftest.py.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project: pyproject.toml, configs/, data/, nbs/, tools/
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"  # the config the tests train with: seconds on a CPU
