"""The house's shape, as its import graph: no cycles, the core apart from its wings, notebooks in dependency order.

Every `import` counts, including those inside functions (lazy imports keep a command's `--help` fast, and they
close cycles all the same).
"""

import ast
import json
import re
from pathlib import Path

import pytest
from paths import ROOT

PKG = ROOT / "mlops_day28"
NBS = ROOT / "nbs"
# The course's core: one module per thing the learner meets, in the course's order, at the package's top.
CORE = ["config", "data", "models", "training", "tracking", "registry", "pipeline", "sweep", "evaluate"]
WINGS = ["reliability", "serve", "team", "workbook"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    "The package's modules that `path` imports, anywhere in it (relative imports resolved)."
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = {module_name(p): p for p in PKG.rglob("*.py") if p.name != "_modidx.py"}
    return {m: {i for i in imports_of(p) if i in mods and i != m and i != "mlops_day28"} for m, p in mods.items()}


def test_the_top_level_is_the_core_its_entry_and_the_wings():
    top = sorted(p.stem for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert top == sorted(["__init__", "_modidx", "cli", *CORE, *WINGS]), top
    assert len(top) - 2 <= 15  # without __init__ and nbdev's _modidx


def test_no_import_cycle(graph):
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append([*stack[stack.index(m) :], m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph[m]):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


@pytest.mark.parametrize("wing", ["serve", "team", "workbook"])
def test_the_core_imports_no_wing(graph, wing):
    "The service, the team server and the self-checks build on the core; the core never reaches into them."
    bad = {
        m: sorted(i for i in graph[m] if i.startswith(f"mlops_day28.{wing}"))
        for m in (f"mlops_day28.{c}" for c in CORE)
    }
    assert not any(bad.values()), {m: i for m, i in bad.items() if i}


def test_the_core_enters_the_reliability_layer_through_its_seam(graph):
    "Journal, reconciler, lock and heartbeat stay behind `reliability.guard`: the core imports nothing else of them."
    bad = {
        m: sorted(
            i for i in graph[m] if i.startswith("mlops_day28.reliability") and i != "mlops_day28.reliability.guard"
        )
        for m in (f"mlops_day28.{c}" for c in CORE)
    }
    assert not any(bad.values()), {m: i for m, i in bad.items() if i}


# What each core module takes from the seam, by name (nbs/reliability/04_guard's last table says why): a run
# that always ends; the registry's gate, one context manager too (its mark, its lock); the sweep's claimed
# name and its workers. Growing it is a decision, not a drift.
SEAM = {
    "tracking": {"guarded_run"},
    "pipeline": {"guarded_run"},
    "registry": {"guarded_run", "guarded_gate"},
    "sweep": {"guarded_run", "claim_run", "guarded_workers"},
}


def names_from_guard(path: Path) -> set[str]:
    "The names `path` imports from `reliability.guard`, anywhere in it."
    return {
        a.name
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("reliability.guard")
        for a in node.names
    }


@pytest.mark.parametrize("module", CORE)
def test_what_the_core_takes_from_the_seam(module):
    assert names_from_guard(PKG / f"{module}.py") == SEAM.get(module, set())


def test_the_reliability_layer_imports_no_core_module_above_config(graph):
    "Reliability sits under the core: it may use the config's errors, nothing that trains, tracks or serves."
    allowed = {"mlops_day28.config"}
    bad = {
        m: sorted(i for i in imports if not i.startswith("mlops_day28.reliability") and i not in allowed)
        for m, imports in graph.items()
        if m.startswith("mlops_day28.reliability")
    }
    assert not any(bad.values()), {m: i for m, i in bad.items() if i}


def notebook_modules() -> dict[str, Path]:
    "Each exported module and the notebook it is written in."
    out = {}
    for nb in NBS.rglob("*.ipynb"):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        for cell in json.loads(nb.read_text())["cells"]:
            m = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(cell["source"]), re.M)
            if m:
                out[f"mlops_day28.{m.group(1)}"] = nb
    return out


def test_each_folder_of_notebooks_is_in_dependency_order(graph):
    "Within a folder, a notebook's module imports only from lower numbers (or from other folders)."
    where = notebook_modules()
    bad = []
    for m, nb in where.items():
        for i in graph.get(m, ()):
            other = where.get(i)
            if other is not None and other.parent == nb.parent and other.name > nb.name:
                bad.append(f"{nb.relative_to(NBS)} imports {other.relative_to(NBS)}")
    assert not bad, bad


def test_every_module_comes_from_a_notebook_in_the_folder_of_its_package(graph):
    where = notebook_modules()
    packages = {"mlops_day28", *(f"mlops_day28.{w}" for w in WINGS)}
    assert set(where) == set(graph) - packages
    for m, nb in where.items():
        wing = m.split(".")[1]
        folder = nb.parent.relative_to(NBS).as_posix()
        expected = wing if wing in WINGS else ("core" if wing in CORE else ".")
        assert folder == expected, f"{m} is written in {nb.relative_to(NBS)}"


def test_exercise_notebooks_export_nothing():
    "The learner's path holds the course and the tasks; the package's code is in the reference notebooks."
    for nb in sorted((NBS / "exercises").glob("*.ipynb")):
        exported = [
            "".join(c["source"])[:60]
            for c in json.loads(nb.read_text())["cells"]
            if c["cell_type"] == "code" and re.match(r"#\|\s*(default_exp|export)", "".join(c["source"]))
        ]
        assert not exported, f"{nb.name}: {exported}"


def test_the_map_names_every_notebook_and_module():
    "nbs/index.ipynb is the map: every notebook in nbs/ (a range `a` … `b` covers a folder's run), with its module."
    cells = json.loads((NBS / "index.ipynb").read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    named = set(re.findall(r"`((?:[a-z]+/)?\d\d_\w+|cli)`", text))
    notebooks = {p.relative_to(NBS).with_suffix("").as_posix() for p in NBS.rglob("*.ipynb")} - {"index"}
    notebooks = {n for n in notebooks if ".ipynb_checkpoints" not in n}
    for a, b in re.findall(r"`([a-z]+/\d\d_\w+)` … `([a-z]+/\d\d_\w+)`", text):
        named |= {n for n in notebooks if n.split("/")[0] == a.split("/")[0] and a <= n <= b}
    assert notebooks - named == set(), "notebooks the map leaves out"
    assert {n for n in named if "/" in n or n == "cli"} - notebooks == set(), (
        "the map names notebooks that do not exist"
    )
    for module, nb in notebook_modules().items():
        short = module.removeprefix("mlops_day28.")
        assert re.search(rf"`{re.escape(nb.relative_to(NBS).with_suffix('').as_posix())}` \| `{short}`", text) or (
            short.startswith("workbook.checks_") and "`workbook.checks_*`" in text
        ), f"the map does not give {nb.relative_to(NBS)} its module {short}"


def all_cells():
    for nb in sorted(NBS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" not in nb.parts:
            for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
                yield nb.relative_to(NBS), i, cell["cell_type"], "".join(cell["source"])


def test_no_cell_reaches_100_lines():
    long = [
        f"{nb} cell {i} ({kind}): {len(src.splitlines())} lines"
        for nb, i, kind, src in all_cells()
        if len(src.splitlines()) >= 100
    ]
    assert not long, long


def test_one_definition_per_export_cell():
    "As in fastcore: one function or class per exported cell (constants may go with it), then the cell that shows it."
    crowded = []
    for nb, i, kind, src in all_cells():
        if kind == "code" and re.match(r"#\|\s*export", src):
            body = "\n".join(line for line in src.splitlines() if not line.startswith("#|"))
            defs = [
                n.name
                for n in ast.parse(body).body
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            ]
            if len(defs) > 1:
                crowded.append(f"{nb} cell {i}: {defs}")
    assert not crowded, crowded
