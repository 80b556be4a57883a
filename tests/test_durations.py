"""tools/durations.py: test-seconds per file from a JUnit XML report, as the markdown table bench/RESULTS.md keeps."""

import importlib.util

from paths import ROOT

_spec = importlib.util.spec_from_file_location("durations", ROOT / "tools" / "durations.py")
durations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(durations)

# What pytest writes (junit_family xunit2: no `file`), as `--dist loadgroup` names the tests (`@group`).
REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="9" time="70.0">
<testcase classname="nbs.exercises.01_tracking.ipynb" name="Cell 0@exercises" time="2.5" />
<testcase classname="nbs.exercises.01_tracking.ipynb" name="Cell 1@exercises" time="10.0" />
<testcase classname="nbs.core.08_sweep.ipynb" name="Cell 3@nbs/core/08_sweep.ipynb" time="4.25" />
<testcase classname="tests.faults.test_fault_sweep" name="test_resume@tests/faults/test_fault_sweep.py" time="30.0">
  <failure message="boom">boom</failure></testcase>
<testcase classname="tests.test_data.TestCsv" name="test_a[x@y]@tests/test_data.py" time="1.0" />
<testcase classname="tests.test_data" name="test_b@tests/test_data.py" time="0.5"><skipped message="no" /></testcase>
<testcase classname="tests.test_gone" name="test_c@tests/test_gone.py" time="0.25" />
<testcase classname="tests.test_data" file="tests/test_data.py" line="3" name="test_d" time="1.5" />
<testcase classname="" name="tests.test_broken" time="0.0"><error message="collection failure" /></testcase>
</testsuite></testsuites>
"""


def test_seconds_per_file_longest_first_with_the_total(tmp_path, capsys):
    (tmp_path / "report.xml").write_text(REPORT)
    (tmp_path / "tests" / "faults").mkdir(parents=True)
    for name in ("test_data.py", "faults/test_fault_sweep.py", "test_broken.py"):
        (tmp_path / "tests" / name).write_text("")
    assert durations.main([str(tmp_path / "report.xml"), "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| file | tests | test-seconds | share |",
        "| --- | ---: | ---: | ---: |",
        "| tests/faults/test_fault_sweep.py | 1 | 30.0 | 60.0% |",
        "| nbs/exercises/01_tracking.ipynb | 2 | 12.5 | 25.0% |",
        "| nbs/core/08_sweep.ipynb | 1 | 4.2 | 8.5% |",
        "| tests/test_data.py | 3 | 3.0 | 6.0% |",
        "| tests/test_gone.py | 1 | 0.2 | 0.5% |",
        "| tests/test_broken.py | 1 | 0.0 | 0.0% |",
        "| **total** (6 files) | 9 | 50.0 | 100% |",
    ]


def test_a_report_that_cannot_be_read_is_named(tmp_path, capsys):
    (tmp_path / "half.xml").write_text(REPORT[:300])
    assert durations.main([str(tmp_path / "half.xml")]) == 2
    assert durations.main([str(tmp_path / "missing.xml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("durations: cannot read ") for line in err), err
