"""Execute the exercise notebooks in order, headless, against the local MLflow server.

`make workbook` runs this. It starts (or reuses) the tracking server, executes
nbs/01_*.ipynb, nbs/02_*.ipynb, ... in a fresh kernel each, writes the executed copies
to .workbook/ (git-ignored), stops at the first failing notebook, and prints a summary
and where to look. The config the notebooks use is $MLOPS_CONFIG (default
configs/config.yaml).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def exercise_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    "The exercise notebooks (NN_*.ipynb with NN >= 01) in `folder`, in order; `only` filters by name prefix."
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00"))
    return [p for p in nbs if not only or any(p.name.startswith(o) for o in only)]


def run_notebook(path: Path, out_dir: Path, timeout: int) -> tuple[bool, float, str]:
    "Execute `path` with nbs/ as working directory; save the executed copy; (ok, seconds, error)."
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(path.parent)}},
        coalesce_streams=True,  # a progress bar's updates saved as one output, as JupyterLab shows it
    )
    start, error = time.perf_counter(), ""
    try:
        client.execute()
    except CellExecutionError as e:
        error = str(e)
    except Exception as e:  # kernel died, timeout, ...
        error = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    return not error, seconds, error


def _show(path: Path) -> str:
    "`path` relative to the project when it is inside it."
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def summarize(uri: str) -> list[str]:
    "A few lines on what the tracking server now holds."
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    lines = []
    for exp in client.search_experiments():
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        if runs:
            lines.append(f"  experiment {exp.name!r}: {len(runs)} run{'s' if len(runs) != 1 else ''}")
    models = client.search_registered_models()
    for m in models:
        found = dict(m.aliases or {})
        aliases = ", ".join(f"@{a}->v{v}" for a, v in sorted(found.items()))
        if found.get("champion") and found.get("champion") == found.get("challenger"):
            aliases += f"; v{found['champion']} was the last challenger and won the gate: it is the champion now"
        lines.append(f"  registered model {m.name!r}" + (f" ({aliases})" if aliases else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="run only notebooks whose names start with these (e.g. 01)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    parser.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="folder of notebooks (default: nbs/)")
    parser.add_argument("--out", type=Path, default=ROOT / ".workbook", help="where executed copies go")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLOPS_CONFIG", "configs/config.yaml")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLOPS_STRICT_CHECKS", "1")  # the solution edition: a failed task check stops the run
    from mlops_day28.coordination import ui_url
    from mlops_day28.errors import MlopsError, report
    from mlops_day28.tracking_server import ensure_tracking_server

    try:
        server = ensure_tracking_server(ROOT)
    except MlopsError as e:  # a bad MLFLOW_PORT (2), a server that cannot start or does not answer (1)
        report(e)
        return e.exit_code
    os.environ["MLFLOW_TRACKING_URI"] = server.uri  # every kernel logs to this server
    how = "started" if server.started else "using"
    print(f"MLflow server: {how} {server.uri}; config: {os.environ['MLOPS_CONFIG']}")

    notebooks = exercise_notebooks(args.nbs, args.only)
    if not notebooks:
        print("error: no exercise notebooks matched", file=sys.stderr)
        return 2
    out_dir = args.out
    total, failed = time.perf_counter(), None
    for nb in notebooks:
        print(f"  {nb.name} ...", end="", flush=True)
        ok, seconds, error = run_notebook(nb, out_dir, args.timeout)
        print(f" {'ok' if ok else 'FAILED'} ({seconds:.1f} s)")
        if not ok:
            failed = (nb, error)
            break
    print(
        f"\n{len(notebooks) if not failed else notebooks.index(failed[0])} of {len(notebooks)} "
        f"notebooks ran in {time.perf_counter() - total:.0f} s; executed copies in {_show(out_dir)}/"
    )
    if failed:
        nb, error = failed
        print(f"\n{nb.name} failed; see {_show(out_dir)}/{nb.name}. The error:\n", file=sys.stderr)
        print("\n".join(error.strip().splitlines()[-25:]), file=sys.stderr)
        return 1
    print("\nThe tracking server holds:")
    print("\n".join(summarize(server.uri)) or "  (nothing yet)")
    print(f"\nOpen the MLflow UI: {ui_url(server.uri)}   (stop the server with: make stop)")
    print("Work through the notebooks yourself: make lab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
