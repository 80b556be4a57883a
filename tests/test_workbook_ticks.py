"""The course's summary checklist after the solution edition: `mlops-check` ticks all six items.

Under `make test` the six exercise notebooks run just before this, in order, on this process's
server (one xdist group: conftest.py), so this reads what they left, as a learner's
`mlops-check` reads what `make workbook` left. Run on its own, it runs them first itself.
"""

import importlib.util
import sys
from pathlib import Path

import pytest
from paths import ROOT

from mlops_day28.workbook import checklist

pytestmark = pytest.mark.slow
EXERCISES = sorted(p.name for p in (ROOT / "nbs" / "exercises").glob("0[1-9]_*.ipynb"))


def _run_workbook(out_dir: Path, capsys) -> None:
    "Execute the exercise notebooks with `make workbook`'s runner (the tiny config: conftest.py)."
    if "run_workbook" not in sys.modules:  # its worker processes find run_notebook by this name
        spec = importlib.util.spec_from_file_location("run_workbook", ROOT / "tools" / "run_workbook.py")
        sys.modules["run_workbook"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["run_workbook"])
    runner = sys.modules["run_workbook"]
    code = runner.main(["--out", str(out_dir)])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err


def test_after_the_solution_edition_every_item_is_ticked(request, tracking_uri, tmp_path, capsys):
    executed = {item.path.name for item in request.session.items if item.path.suffix == ".ipynb"}
    if not set(EXERCISES) <= executed:  # not part of this session: run them here
        _run_workbook(tmp_path, capsys)
    code = checklist.check(["--folder", "nbs/exercises"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count("☑") == 6 and "☐" not in out and "6 of 6 done." in out, out
