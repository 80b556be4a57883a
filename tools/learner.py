"""Write the learner edition: learner/NN_name.ipynb for each exercise notebook (01_tracking ... 07_team), solutions cleared.

`make learner` runs this (and `make lab`, which only fills in what is missing). The notebooks in
nbs/ are the solution edition: each task's solution sits between nbgrader's markers
`### BEGIN SOLUTION` and `### END SOLUTION` in a code cell. Here nbgrader's own ClearSolutions
preprocessor (without its app or database) replaces each such region with its stub,
`# YOUR CODE HERE` + `raise NotImplementedError()`. Everything else stays as in nbs/: markdown
(its relative links made to work from learner/), the other code, cell ids and metadata; outputs are cleared, and nbdev's directives
(`#| export`) and nbval's markers (`# NBVAL_IGNORE_OUTPUT`), which mean nothing to a learner, are left out.
Only the exercises are written (nbs/exercises/); the reference notebooks stay in nbs/, and
an exercise's link to one (../core/06_registry.ipynb) becomes ../nbs/core/06_registry.ipynb. A reference
notebook that an earlier layout copied into learner/ (00j_exercises.ipynb, 06f_body_limit.ipynb, ...)
is moved to learner/backup/<timestamp>/, never deleted: a line says so.

A learner's notebook is never overwritten: an existing learner/NN_name.ipynb is kept as it is.
With --force (`make learner FORCE=1`) it is first moved to learner/backup/<timestamp>/ (a new
folder for each run, never overwriting a backup) and then the fresh one is written. Every write
goes through a temporary file and os.replace, so a failure part-way leaves the learner's file as
it was. Exit codes: 0 done, 1 a file could not be written, 2 a notebook in nbs/ is malformed
(e.g. BEGIN SOLUTION without END SOLUTION); nothing is written then.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"

# nbgrader logs a malformed cell's whole source before it raises; our error names the cell instead.
_QUIET = logging.getLogger("mlops_day28.learner")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class LearnerError(Exception):
    "A notebook in nbs/ that cannot be turned into its learner edition (the message names it and the cell)."


EXERCISE = re.compile(r"(0[1-9]|[1-9][0-9])_[a-z][a-z_]*\.ipynb")  # 01_tracking ... 07_team; not 00*, not 06f_*
# What the learner edition leaves out of code cells: nbdev's directives (`#| export`, `#| default_exp ...`) and
# nbval's markers (`# NBVAL_IGNORE_OUTPUT`), which mean nothing to a learner. A cell of nothing else is dropped.
DIRECTIVE = re.compile(r"^[ \t]*#(\|.*|[ \t]*NBVAL_[A-Z_]+.*)\n?", re.MULTILINE)
# A markdown link to a relative path ([text](../core/06_registry.ipynb)): not a URL, an anchor or an absolute path.
RELATIVE_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)(\))", re.IGNORECASE)


def relink(markdown: str, src: Path, out: Path) -> str:
    "`markdown` from a notebook in folder `src`, its relative links made to point to the same files from folder `out`."

    def moved(m: re.Match) -> str:
        target = os.path.normpath(os.path.join(src, m.group(2)))
        return m.group(1) + Path(os.path.relpath(target, out)).as_posix() + m.group(3)

    return RELATIVE_LINK.sub(moved, markdown)


def exercise_notebooks(folder: Path) -> list[Path]:
    "The exercise notebooks in `folder`, in order: NN_name.ipynb, NN from 01 (not 00, not a lettered reference like 06f_)."
    return sorted(p for p in folder.glob("*.ipynb") if EXERCISE.fullmatch(p.name))


def legacy_copies(out: Path) -> list[Path]:
    "Reference notebooks an earlier `make learner` copied into `out` beside the exercises (serve/02_body_limit, 00j_...)."
    return sorted(p for p in out.glob("[0-9][0-9]*_*.ipynb") if not EXERCISE.fullmatch(p.name))


@functools.cache
def _preprocessor() -> type:
    "nbgrader's ClearSolutions on code cells only; imported on first use (importing nbgrader takes seconds)."
    from nbgrader.preprocessors import ClearSolutions

    class ClearCodeSolutions(ClearSolutions):
        "nbgrader's ClearSolutions on code cells only (markdown is never changed); an error names the cell."

        def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
            if cell.cell_type != "code":
                return cell, resources
            where = f"{resources['name']}, cell {index + 1} (id {cell.get('id', '?')})"
            open_region = False
            for line in cell.source.split("\n"):  # an END without BEGIN: nbgrader would silently drop it
                if self.begin_solution_delimeter in line:
                    open_region = True
                    resources["solutions"] += 1
                elif self.end_solution_delimeter in line:
                    if not open_region:
                        raise LearnerError(f"{where}: {END!r} without {BEGIN!r} before it")
                    open_region = False
            try:
                cell, resources = super().preprocess_cell(cell, resources, index)
            except RuntimeError as e:
                why = {
                    "no end solution statement found": f"{BEGIN!r} without {END!r}",
                    "encountered nested begin solution statements": f"{BEGIN!r} twice without {END!r} between them",
                }.get(str(e), str(e))
                raise LearnerError(f"{where}: {why}") from None
            cell.outputs = []
            cell.execution_count = None
            return cell, resources

    return ClearCodeSolutions


def learner_edition(
    path: Path,
    name: str | None = None,  # shows in errors
    out: Path | None = None,  # the folder it will be written to: its relative links are made to work from there
) -> tuple[NotebookNode, int]:
    "The learner edition of the notebook at `path` and how many solutions it clears."
    import nbformat  # here, not at the top: importing it takes seconds, and keeping needs none of it

    name = name or str(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook
        raise LearnerError(f"{name}: not a readable notebook ({type(e).__name__}: {e})") from None
    resources = {"name": name, "solutions": 0}
    nb, resources = _preprocessor()(enforce_metadata=False, log=_QUIET).preprocess(nb, resources)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = DIRECTIVE.sub("", cell.source)
        elif cell.cell_type == "markdown" and out is not None:
            cell.source = relink(cell.source, path.parent.absolute(), out.absolute())
    nb.cells = [c for c in nb.cells if c.cell_type != "code" or c.source.strip()]
    return nb, resources["solutions"]


def nb_text(nb: NotebookNode) -> str:
    "The notebook as nbformat writes it to a file (JSON, indent 1, a last newline)."
    import nbformat

    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _file_mode() -> int:
    "The permissions a new file gets from open(): 0666 less the umask."
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, text: str) -> None:
    "Write `text` to `path` through a temporary file in the same folder and os.replace: all or nothing."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 -> what a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def new_backup_folder(out: Path) -> Path:
    "A new, empty out/backup/<YYYYmmdd-HHMMSS>[-N]/: never one that exists (two runs in a second get two)."
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / "backup").mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = out / "backup" / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise OSError(f"no free backup folder for {stamp} in {out / 'backup'}")


def replace_keeping_backup(path: Path, text: str, backup: Path) -> None:
    """Put `text` at `path` and the file that was there at `backup` (never overwritten).

    The old file is hard-linked (or, where links are not possible, copied) to `backup` before the
    fresh one replaces it atomically: at every moment `path` holds the learner's file or the new
    one, and the learner's bytes are at `path` or at `backup`.
    """
    try:
        os.link(path, backup)  # fails when `backup` exists
    except FileExistsError:  # never overwrite a backup
        raise
    except OSError:  # a file system without hard links
        with open(backup, "xb") as f:
            f.write(path.read_bytes())
            f.flush()
            os.fsync(f.fileno())
    write_atomically(path, text)


class Written(NamedTuple):
    "What happened to one learner notebook."

    target: Path
    action: str  # "wrote", "kept", "replaced"; "moved": a reference copy of the old layout, to learner/backup/
    solutions: int = 0
    backup: Path | None = None
    unreadable: str | None = None  # a kept notebook that JupyterLab cannot open: why


def unreadable(path: Path) -> str | None:
    "Why the notebook at `path` cannot be opened (not JSON, not a notebook), or None when it can."
    import json

    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
    except (OSError, UnicodeDecodeError) as e:
        return f"{type(e).__name__}: {e}"
    return None if isinstance(nb, dict) and isinstance(nb.get("cells"), list) else "not a notebook (no list of cells)"


def latest_backup(out: Path, name: str) -> Path | None:
    "The newest copy of learner notebook `name` under out/backup/, if any."
    copies = sorted(out.glob(f"backup/*/{name}"), key=lambda p: p.parent.name)
    return copies[-1] if copies else None


def _show(path: Path) -> str:
    "`path` relative to the project when it is inside it."
    path = path.absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build(nbs: Path, out: Path, force: bool = False) -> list[Written]:
    """Write the learner edition of every exercise notebook in `nbs` to `out`; what was done to each.

    Existing notebooks in `out` are kept, or with `force` backed up first. Every notebook to be
    written is converted before anything is written, so a malformed one (LearnerError) leaves
    `out` untouched.
    """
    sources = exercise_notebooks(nbs)
    if not sources:
        raise LearnerError(f"no exercise notebooks (NN_*.ipynb, not 00*) in {_show(nbs)}/")
    editions = {src: learner_edition(src, _show(src), out) for src in sources if force or not (out / src.name).exists()}
    out.mkdir(parents=True, exist_ok=True)
    done, backup_folder = [], None
    for src in sources:
        target = out / src.name
        if src not in editions:
            done.append(Written(target, "kept", unreadable=unreadable(target)))
            continue
        nb, solutions = editions[src]
        text = nb_text(nb)
        if force and target.exists():
            backup_folder = backup_folder or new_backup_folder(out)
            backup = backup_folder / src.name
            replace_keeping_backup(target, text, backup)
            done.append(Written(target, "replaced", solutions, backup))
        else:
            write_atomically(target, text)
            done.append(Written(target, "wrote", solutions))
    legacy = legacy_copies(out)
    if legacy:  # moved, never deleted: a learner may have written in one
        backup_folder = backup_folder or new_backup_folder(out)
        for copy in legacy:
            os.replace(copy, backup_folder / copy.name)
            done.append(Written(copy, "moved", backup=backup_folder / copy.name))
    return done


def describe(w: Written) -> str:
    "One line on what happened to one notebook."
    tasks = f"{w.solutions} solution{'s' if w.solutions != 1 else ''} cleared"
    if w.action == "kept" and w.unreadable:
        backup = latest_backup(w.target.parent, w.target.name)
        earlier = f"your last copy is {_show(backup)}" if backup else "there is no copy of it in learner/backup/"
        return (
            f"warning: {_show(w.target)} cannot be read ({w.unreadable}); it is kept as it is, and JupyterLab will show "
            f"it as 'Unreadable Notebook': {earlier}; `make learner FORCE=1` moves it to learner/backup/ and writes a fresh one"
        )
    if w.action == "kept":
        return f"kept {_show(w.target)} (yours)"
    if w.action == "moved":
        return f"moved {_show(w.target)} to {_show(w.backup)}: a reference notebook an earlier layout copied here, not an exercise"
    if w.action == "replaced":
        return f"wrote {_show(w.target)} ({tasks}); yours moved to {_show(w.backup)}"
    return f"wrote {_show(w.target)} ({tasks})"


def missing_servers() -> list[str]:
    "One line for each server program that some tasks need and this machine lacks (Prometheus, PostgreSQL)."
    from mlops_day28.serve.prometheus import promtool  # what the notebooks look for, found the same way
    from mlops_day28.team.postgres import postgres_program

    lines = []
    if not promtool():
        lines.append(
            "note: Prometheus is not installed: 06_monitoring's Task 3 (the alert rule's test) needs it, and Task 2 then "
            "checks your PromQL with the notebook's own histogram_quantile; "
            "`apt-get install prometheus` (macOS: `brew install prometheus`)"
        )
    if not postgres_program("initdb"):
        lines.append(
            "note: PostgreSQL is not installed: 07_team's team server needs it; "
            "`apt-get install postgresql` (macOS: `brew install postgresql`)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--force",
        action="store_true",
        help="start over: move each existing learner notebook to learner/backup/<timestamp>/, then write a fresh one",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the notebooks written (for `make lab`)")
    parser.add_argument(
        "--nbs", type=Path, default=ROOT / "nbs" / "exercises", help="the exercises (default: nbs/exercises/)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "learner", help="where to write (default: learner/)")
    args = parser.parse_args(argv)

    try:
        done = build(args.nbs, args.out, force=args.force)
    except LearnerError as e:
        print(f"error: {e}; nothing was written", file=sys.stderr)
        return 2
    except OSError as e:
        print(
            f"error: could not write the learner edition: {e}; every notebook of yours is still in learner/ or learner/backup/",
            file=sys.stderr,
        )
        return 1
    for w in done:
        if w.unreadable:
            print(describe(w), file=sys.stderr)
        elif not (args.quiet and w.action == "kept"):
            print(describe(w))
    for line in missing_servers():  # before JupyterLab starts, not in the middle of Exercise 6
        print(line)
    if args.quiet and all(w.action in ("kept", "moved") for w in done):
        return 0
    start = _show(done[0].target)
    kept = any(w.action == "kept" for w in done)
    print(
        f"Start with {start}: `make lab` opens it."
        + (" (`make learner FORCE=1` starts over, keeping your copies in learner/backup/.)" if kept else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
