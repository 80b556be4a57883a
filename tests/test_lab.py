"""`make lab`'s JupyterLab is quiet: no nbgrader menus or server extensions, no "get notified about news?" prompt."""

import json
import os
import re
import sys

import pytest
from paths import ROOT

from mlops_day28.reliability.processes import free_port, http_get, start_process

pytestmark = [pytest.mark.server, pytest.mark.slow]

LAB_CONFIG = ROOT / "tools" / "jupyter_config"
QUIETED = {"@jupyter/nbgrader", "@jupyterlab/apputils-extension:announcements"}


def test_make_lab_starts_jupyterlab_with_the_projects_settings():
    recipe = re.search(r"^lab:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert "JUPYTER_CONFIG_PATH=$(LAB_CONFIG) $(BIN)/jupyter lab" in recipe
    assert "LAB_CONFIG := $(CURDIR)/tools/jupyter_config" in (ROOT / "Makefile").read_text()


def test_jupyterlab_with_those_settings_has_no_nbgrader_and_no_news_prompt(tmp_path):
    port, token = free_port(), "t0ken"
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    cmd += ["--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"]
    env = {**os.environ, "JUPYTER_CONFIG_PATH": str(LAB_CONFIG), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    with start_process(
        cmd, "jupyterlab", f"{url}/api/status?token={token}", timeout=90, env=env, log=tmp_path / "lab.log"
    ):
        status, page = http_get(f"{url}/lab?token={token}", timeout=10)
        assert status == 200
        config = json.loads(
            re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S).group(1)
        )
        assert set(config["disabledExtensions"]) >= QUIETED
        # nbgrader's server extensions are not loaded: its pages are not there
        assert http_get(f"{url}/formgrader?token={token}", timeout=10)[0] == 404
        assert http_get(f"{url}/assignments?token={token}", timeout=10)[0] == 404
