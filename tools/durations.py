"""Test-seconds per file from a pytest JUnit XML report, as a markdown table: the longest first, then the total.

    .venv/bin/python -m pytest -n 3 --dist loadgroup --junitxml=report.xml
    .venv/bin/python tools/durations.py report.xml

A test's seconds are its setup, call and teardown together (pytest's `junit_duration_report`
default, "total"), so a module-scoped server counts once, in the file that starts it. A notebook
is one row (its cells are nbval's tests). The file comes from a test case's `file` attribute
where the report has one (`junit_family=xunit1`), else from its `classname`: pytest writes
`tests/faults/test_fault_sweep.py::TestX` as `tests.faults.test_fault_sweep.TestX`, so the
longest prefix that names a .py file under --root is the file. Exit codes: 0 done, 2 a report
that cannot be read.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def file_of(case: dict, root: Path) -> str:
    "The file (relative to the project) of a JUnit `testcase`'s attributes `case`."
    if case.get("file"):
        return case["file"]
    classname = case.get("classname") or case.get("name", "")  # a collection error has no class
    if ".ipynb" in classname:  # nbs.exercises.01_tracking.ipynb: the notebook's path, dots for slashes
        return classname[: classname.index(".ipynb")].replace(".", "/") + ".ipynb"
    parts = classname.split(".")
    for n in range(len(parts), 0, -1):  # tests.test_x.TestY: tests/test_x.py, if it is there
        path = "/".join(parts[:n]) + ".py"
        if (root / path).is_file():
            return path
    for n, part in enumerate(
        parts
    ):  # not under root: the first name pytest collects as a module (test_*.py, *_test.py)
        if part.startswith("test_") or part.endswith("_test"):
            return "/".join(parts[: n + 1]) + ".py"
    return classname


def per_file(report: Path, root: Path) -> dict[str, tuple[int, float]]:
    "file -> (number of tests, test-seconds) in the JUnit XML `report`."
    totals: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for case in ET.parse(report).getroot().iter("testcase"):
        row = totals[file_of(case.attrib, root)]
        row[0] += 1
        row[1] += float(case.get("time") or 0)
    return {f: (n, s) for f, (n, s) in totals.items()}


def table(rows: dict[str, tuple[int, float]]) -> str:
    "A markdown table of `rows`, the most test-seconds first, with their share and the total."
    total_tests, total = sum(n for n, _ in rows.values()), sum(s for _, s in rows.values())
    lines = ["| file | tests | test-seconds | share |", "| --- | ---: | ---: | ---: |"]
    for f, (n, s) in sorted(rows.items(), key=lambda kv: (-kv[1][1], kv[0])):
        lines.append(f"| {f} | {n} | {s:.1f} | {100 * s / total if total else 0:.1f}% |")
    lines.append(f"| **total** ({len(rows)} files) | {total_tests} | {total:.1f} | 100% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="pytest's --junitxml file")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the project the report's tests are in")
    args = parser.parse_args(argv)
    try:
        rows = per_file(args.report, args.root)
    except (OSError, ET.ParseError) as e:
        print(f"durations: cannot read {args.report}: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
