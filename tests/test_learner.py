"""`make learner`: the learner edition in learner/, solutions cleared, a learner's notebook never overwritten."""

import importlib.util
from pathlib import Path

import nbformat
import pytest
from paths import ROOT

SCRIPT = ROOT / "tools" / "learner.py"
spec = importlib.util.spec_from_file_location("learner", SCRIPT)
learner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learner)

v4 = nbformat.v4
SOLVED = 'import mlflow\n### BEGIN SOLUTION\nwith mlflow.start_run(run_name="my_first_run"):\n    mlflow.log_param("lr", 0.01)\n### END SOLUTION\nq1.check()'
INDENTED = "def accuracy(y, p):\n    ### BEGIN SOLUTION\n    return (y == p).mean()\n    ### END SOLUTION"
MARKDOWN = "# Exercise\nThe markers `### BEGIN SOLUTION` / `### END SOLUTION` in markdown are text."


def write_nb(path: Path, *cells) -> Path:
    "A notebook of `cells` (strings are code cells) at `path`, with a python kernelspec and outputs."
    cells = [
        c
        if not isinstance(c, str)
        else v4.new_code_cell(c, execution_count=1, outputs=[v4.new_output("stream", text="out\n")])
        for c in cells
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata.kernelspec = {"display_name": "python3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nbs(tmp_path):
    "A small solution edition: a reference notebook, two exercises."
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_nb(folder / "00_helpers.ipynb", "### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    write_nb(folder / "01_first.ipynb", v4.new_markdown_cell(MARKDOWN), SOLVED, INDENTED, "print('not a task')")
    write_nb(folder / "07_plain.ipynb", v4.new_markdown_cell("no tasks here"), "x = 2")
    write_nb(folder / "06f_reference.ipynb", "#| export\ndef helper():\n    return 1")  # not an exercise
    return folder


@pytest.fixture
def make_learner(tmp_path, capsys):
    "Run the script's main on tmp_path/nbs -> tmp_path/learner; (exit code, stdout, stderr)."

    def go(*args, nbs=None):
        code = learner.main(["--nbs", str(nbs or tmp_path / "nbs"), "--out", str(tmp_path / "learner"), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return go


def read(path: Path):
    return nbformat.read(path, as_version=4)


def test_solutions_become_stubs_and_the_rest_stays(nbs, tmp_path, make_learner):
    code, out, _ = make_learner()
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "learner").glob("*.ipynb")) == ["01_first.ipynb", "07_plain.ipynb"]
    before, after = read(nbs / "01_first.ipynb"), read(tmp_path / "learner" / "01_first.ipynb")
    assert [c.id for c in after.cells] == [c.id for c in before.cells]
    assert after.metadata == before.metadata
    md, solved, indented, plain = after.cells
    assert md.source == MARKDOWN  # markdown is never changed, markers or not
    assert solved.source == "import mlflow\n# YOUR CODE HERE\nraise NotImplementedError()\nq1.check()"
    assert indented.source == "def accuracy(y, p):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert plain.source == "print('not a task')"
    assert all(c.outputs == [] and c.execution_count is None for c in after.cells if c.cell_type == "code")
    assert "wrote" in out and "01_first.ipynb (2 solutions cleared)" in out
    assert out.strip().splitlines()[-1].startswith(f"Start with {tmp_path / 'learner' / '01_first.ipynb'}")
    assert "make lab" in out.strip().splitlines()[-1]


def test_a_notebook_without_markers_is_copied_with_outputs_cleared(nbs, tmp_path, make_learner):
    make_learner()
    before, after = read(nbs / "07_plain.ipynb"), read(tmp_path / "learner" / "07_plain.ipynb")
    for cell in before.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    assert after == before


def test_an_existing_learner_notebook_is_kept_byte_for_byte(nbs, tmp_path, make_learner):
    make_learner()
    mine = tmp_path / "learner" / "01_first.ipynb"
    nb = read(mine)
    nb.cells[1].source = nb.cells[1].source.replace("raise NotImplementedError()", "print('my answer')")
    nbformat.write(nb, mine)
    edited = mine.read_bytes()
    (tmp_path / "learner" / "07_plain.ipynb").unlink()  # deleted: written again

    code, out, _ = make_learner()
    assert code == 0
    assert mine.read_bytes() == edited
    assert f"kept {mine} (yours)" in out
    assert f"wrote {tmp_path / 'learner' / '07_plain.ipynb'}" in out
    assert not (tmp_path / "learner" / "backup").exists()


@pytest.mark.parametrize("quiet", [[], ["--quiet"]], ids=["make learner", "make lab"])
def test_an_unreadable_learner_notebook_is_named_in_one_line_and_kept(nbs, tmp_path, make_learner, quiet):
    make_learner()
    mine = tmp_path / "learner" / "01_first.ipynb"
    mine.write_text('{"cells": [\n  {"cell_type": "code",\n')  # cut short, as by a crash while saving
    broken = mine.read_bytes()

    code, out, err = make_learner(*quiet)
    assert code == 0  # a warning: the other notebooks are fine, and JupyterLab still starts
    assert mine.read_bytes() == broken  # never overwritten
    [line] = err.strip().splitlines()
    assert line.startswith(f"warning: {mine} cannot be read (not valid JSON (line 3, column 1: ")
    assert "there is no copy of it in learner/backup/" in line and "make learner FORCE=1" in line
    assert f"kept {mine}" not in out  # said once, as the warning

    backup = tmp_path / "learner" / "backup" / "20261205-000000" / "01_first.ipynb"
    backup.parent.mkdir(parents=True)
    backup.write_text("an earlier copy")
    [line] = make_learner(*quiet)[2].strip().splitlines()
    assert f"your last copy is {backup}" in line


def test_force_moves_the_learners_notebook_to_a_backup_and_writes_a_fresh_one(nbs, tmp_path, make_learner):
    make_learner()
    mine = tmp_path / "learner" / "01_first.ipynb"
    fresh = mine.read_bytes()
    mine.write_bytes(fresh.replace(b"raise NotImplementedError()", b"print('my answer')"))
    edited = mine.read_bytes()

    code, out, _ = make_learner("--force")
    assert code == 0
    assert mine.read_bytes() == fresh
    [backup] = (tmp_path / "learner" / "backup").glob("*/01_first.ipynb")
    assert backup.read_bytes() == edited
    assert f"yours moved to {backup}" in out
    assert not list((tmp_path / "learner").glob(".*.tmp"))  # no temporary file left


def test_two_forced_runs_keep_two_backups(nbs, tmp_path, make_learner):
    make_learner()
    mine = tmp_path / "learner" / "01_first.ipynb"
    mine.write_text("first edit")
    assert make_learner("--force")[0] == 0
    mine.write_text("second edit")
    assert make_learner("--force")[0] == 0  # within the same second, most likely
    backups = sorted((tmp_path / "learner" / "backup").glob("*/01_first.ipynb"))
    assert len(backups) == 2
    assert {b.read_text() for b in backups} == {"first edit", "second edit"}


def test_a_failed_write_leaves_the_learners_notebook(nbs, tmp_path, make_learner, monkeypatch):
    make_learner()
    mine = tmp_path / "learner" / "01_first.ipynb"
    mine.write_text("my work")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(learner.os, "replace", disk_full)
    code, _, err = make_learner("--force")
    assert code == 1
    assert "No space left on device" in err
    assert mine.read_text() == "my work"
    assert not list((tmp_path / "learner").glob(".*.tmp"))


def test_begin_without_end_is_an_error_naming_the_notebook_and_cell(nbs, tmp_path, make_learner):
    bad = write_nb(nbs / "02_broken.ipynb", v4.new_markdown_cell("ok"), "x = 1\n### BEGIN SOLUTION\ny = 2")
    cell_id = read(bad).cells[1].id
    code, _, err = make_learner()
    assert code == 2
    assert f"{bad}, cell 2 (id {cell_id})" in err
    assert "'### BEGIN SOLUTION' without '### END SOLUTION'" in err
    assert not (tmp_path / "learner").exists()  # nothing written


def test_end_without_begin_is_an_error_too(nbs, make_learner):
    write_nb(nbs / "02_broken.ipynb", "x = 1\n### END SOLUTION")
    code, _, err = make_learner()
    assert code == 2
    assert "02_broken.ipynb, cell 1" in err and "without '### BEGIN SOLUTION'" in err


SEVEN = [  # the learner's path, named here rather than by the function under test
    "01_tracking.ipynb",
    "02_registry.ipynb",
    "03_pipeline.ipynb",
    "04_sweep.ipynb",
    "05_cicd.ipynb",
    "06_monitoring.ipynb",
    "07_team.ipynb",
]


def test_the_real_solution_edition_is_the_seven_exercises(tmp_path, make_learner):
    code, out, err = make_learner(nbs=ROOT / "nbs" / "exercises")
    assert code == 0, err
    written = sorted((tmp_path / "learner").glob("*.ipynb"))
    assert [p.name for p in written] == SEVEN
    for path in written:
        nb = read(path)
        code_cells = "".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "BEGIN SOLUTION" not in code_cells and "END SOLUTION" not in code_cells, path.name
        assert "#|" not in code_cells and "NBVAL_" not in code_cells, (
            path.name
        )  # nothing that means nothing to a learner
        markdown = "".join(c.source for c in nb.cells if c.cell_type == "markdown")  # text about the markers
        assert path.read_text().count(learner.BEGIN) == markdown.count(learner.BEGIN), path.name
        links = [m.group(2) for m in learner.RELATIVE_LINK.finditer(markdown)]
        assert all((path.parent / link.partition("#")[0]).exists() for link in links), (path.name, links)
    assert out.strip().splitlines()[-1].startswith(f"Start with {tmp_path / 'learner' / '01_tracking.ipynb'}")


def test_links_to_the_reference_work_from_the_learners_folder():
    "An exercise links to its helper's notebook in nbs/; from learner/ the same file is one folder further."
    exercises, out = ROOT / "nbs" / "exercises", ROOT / "learner"
    md = "In [`core/06_registry`](../core/06_registry.ipynb#the-gate), [docs](https://mlflow.org) and [up](#top)."
    assert learner.relink(md, exercises, out) == (
        "In [`core/06_registry`](../nbs/core/06_registry.ipynb#the-gate), [docs](https://mlflow.org) and [up](#top)."
    )
    nb, _ = learner.learner_edition(exercises / "02_registry.ipynb", out=out)
    assert "](../nbs/core/06_registry.ipynb)" in "".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_directives_are_left_out_and_a_cell_of_nothing_else_is_dropped(tmp_path):
    path = write_nb(
        tmp_path / "01_x.ipynb",
        "#| default_exp x",
        "#| export\ndef f():\n    return 1",
        "# NBVAL_IGNORE_OUTPUT\nprint(f())  # NBVAL_ stays in a comment that is not a marker",
        v4.new_markdown_cell("`#| export` in markdown is text"),
    )
    nb, _ = learner.learner_edition(path)
    assert [c.source for c in nb.cells] == [
        "def f():\n    return 1",
        "print(f())  # NBVAL_ stays in a comment that is not a marker",
        "`#| export` in markdown is text",
    ]


def test_reference_copies_from_the_old_layout_move_to_the_backup(nbs, tmp_path, make_learner):
    "An earlier layout copied reference notebooks into learner/: they move to learner/backup/, never deleted."
    out = tmp_path / "learner"
    out.mkdir()
    (out / "06f_body_limit.ipynb").write_text("as it was written")
    (out / "00j_exercises.ipynb").write_text("with a note of mine")
    code, out_text, _ = make_learner()
    assert code == 0
    [backup] = (out / "backup").iterdir()
    assert (backup / "06f_body_limit.ipynb").read_text() == "as it was written"
    assert (backup / "00j_exercises.ipynb").read_text() == "with a note of mine"
    assert f"moved {out / '00j_exercises.ipynb'} to {backup / '00j_exercises.ipynb'}: a reference notebook" in out_text
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["01_first.ipynb", "07_plain.ipynb"]
    code, out_text, _ = make_learner("--quiet")  # make lab: nothing left to say
    assert (code, out_text) == (0, "")


def test_two_backups_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(learner.time, "strftime", lambda fmt: "20261130-031500")
    first, second = learner.new_backup_folder(tmp_path), learner.new_backup_folder(tmp_path)
    assert first.name == "20261130-031500" and second.name == "20261130-031500-2"
    assert first.is_dir() and second.is_dir()


def test_missing_prometheus_and_postgresql_are_named_with_the_tasks_they_block(monkeypatch):
    import mlops_day28.serve.prometheus as prometheus
    import mlops_day28.team.postgres as postgres

    monkeypatch.setattr(prometheus, "promtool", lambda: None)
    monkeypatch.setattr(postgres, "postgres_program", lambda name: None)
    prom, pg = learner.missing_servers()
    assert (
        prom.startswith("note: Prometheus is not installed: 06_monitoring's Task 3")
        and "apt-get install prometheus" in prom
    )
    assert pg.startswith("note: PostgreSQL is not installed: 07_team") and "apt-get install postgresql" in pg
    monkeypatch.setattr(prometheus, "promtool", lambda: "/usr/bin/promtool")
    monkeypatch.setattr(postgres, "postgres_program", lambda name: Path("/usr/lib/postgresql/17/bin/initdb"))
    assert learner.missing_servers() == []
