"""Execute the exercise notebooks in order, headless, against the local MLflow server.

`make workbook` runs this. It starts (or reuses) the tracking server, executes
nbs/01_*.ipynb to nbs/06_*.ipynb (the course's six exercises; later ones, such as
07_team, only when named) in a fresh kernel each, writes the executed copies
to .workbook/ (git-ignored), starts no new notebook after one fails, and prints a summary
and where to look. The config the notebooks use is $MLOPS_CONFIG (default
configs/config.yaml).

Two notebooks run at a time (`--jobs`, default 2): much of a notebook's time is one core
busy starting a kernel, importing, or waiting on the server, a subprocess or a service.
Each notebook stands on its own (the tests run each against an empty server), so the
only order that matters is `AFTER`'s. Each kernel gets an equal share of the cores for
torch (`OMP_NUM_THREADS`, unless set), so two trainings do not fight over them.

One run at a time in a project: the runner holds the project's workbook lock (`.workbook/lock`,
`mlops_day28.reliability.coordination.ProjectLock`) from before it reaches the server until it ends. A
second run, or a test session executing the notebooks, is refused in one line naming the pid
that holds it (exit code 2); the lock goes with its process, however that ends.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]

# 02_registry deletes and rebuilds the registered model when it starts, so the notebooks that
# read or move its champion start after it ends. The others share nothing but the server.
AFTER = {
    "03_pipeline.ipynb": ["02_registry.ipynb"],
    "05_cicd.ipynb": ["02_registry.ipynb"],
    "06_monitoring.ipynb": ["02_registry.ipynb"],
}


COURSE = 6  # the course's exercises are 01 to 06; 07_team and later go further, and run when named


def exercise_notebooks(folder: Path, only: list[str] | None = None) -> list[Path]:
    "The course's exercise notebooks (01_*.ipynb to 06_*.ipynb) in `folder`, in order; `only`: any NN_*.ipynb by name prefix."
    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("00"))
    if only:
        return [p for p in nbs if any(p.name.startswith(o) for o in only)]
    return [p for p in nbs if int(p.name[:2]) <= COURSE]


def going_further(folder: Path) -> list[Path]:
    "The notebooks after the course's six (07_team, ...), which `make workbook` does not run."
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if int(p.name[:2]) > COURSE)


# jupyter_client picks a kernel's ports free, then the kernel binds them: another process may take one in
# between ("Address already in use", then "Kernel died before replying to kernel_info"). No cell has run
# then, so the notebook is started again, up to this many times in all.
KERNEL_STARTS = 3


def run_notebook(path: Path, out_dir: Path, timeout: int) -> tuple[bool, float, str]:
    "Execute `path` with nbs/ as working directory; save the executed copy; (ok, seconds, error)."
    start = time.perf_counter()
    for attempt in range(1, KERNEL_STARTS + 1):
        nb, error = nbformat.read(path, as_version=4), ""
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            resources={"metadata": {"path": str(path.parent)}},
            coalesce_streams=True,  # a progress bar's updates saved as one output, as JupyterLab shows it
        )
        try:
            client.execute()
        except CellExecutionError as e:
            error = str(e)
        except Exception as e:  # kernel died, timeout, ...
            error = f"{type(e).__name__}: {e}"
            never_ran = all(c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
            if "before replying to kernel_info" in error and never_ran and attempt < KERNEL_STARTS:
                continue
        break
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    return not error, seconds, error


def stop_hint(uri: str, named: bool) -> str:
    "How to stop the server at `uri` (`named`: the user's MLFLOW_TRACKING_URI): the team one, the local one, or not ours."
    from mlops_day28.reliability.local_server import recorded_server
    from mlops_day28.team.server import recorded_team_server

    team, local = recorded_team_server(ROOT), recorded_server(ROOT)
    if team and team.uri == uri:
        return "stop it with: make team-stop"
    if (local and local.uri == uri) or not named:  # started here, or found running as .mlflow/ recorded it
        return "stop the server with: make stop"
    return "the server at MLFLOW_TRACKING_URI is not this project's to stop"


def ready(pending: list[Path], done: set[str], started: set[str]) -> list[Path]:
    "The notebooks in `pending` (in order) that may start: every notebook of `AFTER` they wait for has ended, or is not in this run."
    names = {p.name for p in pending} | started
    return [p for p in pending if all(a in done or a not in names for a in AFTER.get(p.name, []))]


def run_all(notebooks: list[Path], out_dir: Path, timeout: int, jobs: int) -> tuple[list[Path], tuple | None]:
    "Execute `notebooks`, `jobs` at a time in the order of `AFTER`; start none after a failure. (those that ran, failure)."
    pending, running, done, failed = list(notebooks), {}, [], None
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked threads or sockets
    if str(Path(__file__).parent) not in sys.path:  # where a worker finds this module when it is not __main__
        sys.path.insert(0, str(Path(__file__).parent))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as pool:
        while pending or running:
            while (
                not failed
                and len(running) < jobs
                and (nxt := ready(pending, {p.name for p in done}, {p.name for p in running.values()}))
            ):
                nb = nxt[0]
                pending.remove(nb)
                running[pool.submit(run_notebook, nb, out_dir, timeout)] = nb
            if not running:
                break  # a failure: what is pending never starts
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f].name):
                nb = running.pop(future)
                ok, seconds, error = _result(future)
                print(f"  {nb.name} ... {'ok' if ok else 'FAILED'} ({seconds:.1f} s)", flush=True)
                if ok:
                    done.append(nb)
                elif not failed:
                    failed = (nb, error)
    return done, failed


def _result(future: Future) -> tuple[bool, float, str]:
    try:
        return future.result()
    except Exception as e:  # the worker process itself died
        return False, 0.0, f"{type(e).__name__}: {e}"


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
    parser.add_argument(
        "--nbs", type=Path, default=ROOT / "nbs" / "exercises", help="folder of notebooks (default: nbs/exercises/)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".workbook", help="where executed copies go")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at a time (default 2; 1: one by one)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be 1 or more, not {args.jobs}")

    os.environ.setdefault("MLOPS_CONFIG", "configs/config.yaml")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLOPS_STRICT_CHECKS", "1")  # the solution edition: a failed task check stops the run
    from mlops_day28.config import MlopsError, find_project_root, report
    from mlops_day28.reliability.coordination import ProjectLock

    try:  # before the server: a second run must not start (or wait for) one either
        lock = ProjectLock(find_project_root(args.nbs), "make workbook").acquire()
    except MlopsError as e:  # another run executes this project's notebooks (2)
        report(e)
        return e.exit_code
    try:
        return run_locked(args)
    finally:
        lock.release()


def run_locked(args: argparse.Namespace) -> int:
    "The run itself, while this process holds the project's workbook lock."
    from mlops_day28.config import MlopsError, report
    from mlops_day28.reliability.coordination import ui_url
    from mlops_day28.reliability.local_server import ensure_tracking_server

    named = bool(os.environ.get("MLFLOW_TRACKING_URI"))  # before it is set below, for every kernel
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
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // min(args.jobs, len(notebooks)))))
    total = time.perf_counter()
    print(f"{len(notebooks)} notebooks, {args.jobs} at a time:", flush=True)
    done, failed = run_all(notebooks, out_dir, args.timeout, args.jobs)
    print(
        f"\n{len(done)} of {len(notebooks)} notebooks ran in {time.perf_counter() - total:.0f} s; "
        f"executed copies in {_show(out_dir)}/"
    )
    if failed:
        nb, error = failed
        print(f"\n{nb.name} failed; see {_show(out_dir)}/{nb.name}. The error:\n", file=sys.stderr)
        print("\n".join(error.strip().splitlines()[-25:]), file=sys.stderr)
        return 1
    print("\nThe tracking server holds:")
    print("\n".join(summarize(server.uri)) or "  (nothing yet)")
    print(f"\nOpen the MLflow UI: {ui_url(server.uri)}   ({stop_hint(server.uri, named)})")
    print("Work through the notebooks yourself: make lab")
    if not args.only:
        for nb in going_further(args.nbs):
            print(
                f"Going further: {nb.name}, not run here: a team server and sweep workers of its own (make lab opens your copy)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
