"""Exercise 6 leaves nothing behind: no service, port or Prometheus, even when a cell fails.

The notebook is executed up to the point where everything runs at once (the package's service
and Prometheus started in the background, the learner's own service in a thread), then stopped
there: by a failing cell, or by a kernel interrupt (Ctrl-C, a KeyboardInterrupt in the cell).
After nbclient has shut the kernel down, no process it started may remain and no port it used
may still listen. And a background process dies with its parent even when that is killed.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from paths import ROOT

from mlops_day28.reliability.processes import port_is_open

pytestmark = [pytest.mark.server, pytest.mark.slow]

RECORD = """
import json, os
from mlops_day28.workbook.checks_monitoring import _WATCHING  # the Prometheus q1's check started for q2's
procs = [p for p in (service, prometheus, *_WATCHING.values()) if p]
json.dump({
    "kernel": os.getpid(),
    "pids": [p.pid for p in procs],
    "ports": [int(u.rsplit(":", 1)[1]) for u in [*(p.url for p in procs), my_url]],
}, open(%r, "w"))
"""


def _truncated(record: Path, stop: str) -> nbformat.NotebookNode:
    "06_monitoring up to q1's check, then a cell recording what runs, then `stop`."
    nb = nbformat.read(ROOT / "nbs" / "exercises" / "06_monitoring.ipynb", as_version=4)
    end = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and re.match(r"q1\.check\(\)", c.source))
    nb.cells = [*nb.cells[: end + 1], nbformat.v4.new_code_cell(RECORD % str(record)), nbformat.v4.new_code_cell(stop)]
    return nb


def _children_named(pid: int) -> list[str]:
    "prometheus or mlops-serve processes that are still children of `pid` (should the kernel still run)."
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [
        " ".join(p.cmdline()[:2]) for p in kids if re.search(r"prometheus|mlops-serve|uvicorn", " ".join(p.cmdline()))
    ]


@pytest.mark.parametrize("stop", ["raise RuntimeError('a cell fails here')", "import time\ntime.sleep(120)"])
def test_nothing_is_left_behind_when_the_notebook_stops_midway(stop, tracking_uri, tmp_path):
    record = tmp_path / "running.json"
    nb = _truncated(record, stop)
    client = NotebookClient(
        nb,
        timeout=300,
        timeout_func=lambda cell: (
            20 if "time.sleep(120)" in cell.source else 300
        ),  # then Ctrl-C: the kernel is interrupted
        interrupt_on_timeout=True,
        kernel_name="python3",
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(ROOT / "nbs" / "exercises")}},
    )
    with pytest.raises(CellExecutionError) as e:
        client.execute()
    assert ("RuntimeError" if "raise" in stop else "KeyboardInterrupt") in str(e.value)
    running = json.loads(record.read_text())
    assert len(running["pids"]) == 3 and len(running["ports"]) == 4, running  # Prometheus is installed here
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in running["pids"])
        or any(port_is_open(p) for p in running["ports"])
    ):
        time.sleep(0.2)
    alive = [p for p in running["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running: {alive}"
    assert not [p for p in running["ports"] if port_is_open(p)], "a port still listens"
    assert not psutil.pid_exists(running["kernel"]) or not _children_named(running["kernel"])


def test_a_background_process_dies_with_its_parent_even_when_killed(tmp_path):
    "PR_SET_PDEATHSIG: the kernel killed with SIGKILL runs no exit handler, yet its Prometheus stops."
    if sys.platform != "linux":
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    out = tmp_path / "pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mlops_day28.serve.prometheus import launch; import time, pathlib\n"
            f"p = launch(['sleep', '300'], 'sleeper', 'http://127.0.0.1:1', lambda: True, 5, wait=False)\n"
            f"pathlib.Path({str(out)!r}).write_text(str(p.pid)); time.sleep(300)",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(out.read_text())
    assert psutil.pid_exists(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(child).wait(10)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
