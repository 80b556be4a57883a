"""`make install` takes PyTorch's CPU build on Linux without a GPU, and falls back quietly where its index is out of reach.

The command `make install` would run is read with `make -n`, so nothing is installed; the
CPU index is stood in for by a local web server, or by ports where nothing answers.
"""

import os
import socket
import subprocess
import sys

import pytest
from paths import ROOT

from mlops_day28.reliability.processes import HOST, free_port, start_process


def pip_install_line(**env) -> str:
    "The `pip install` command `make install` computes in this environment (`make -n`: nothing runs)."
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "FORCE_CUDA", "TORCH_CPU"))}
    r = subprocess.run(
        ["make", "-n", "-W", "constraints.txt", ".venv/.installed"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environ, **env},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    (line,) = [line for line in r.stdout.splitlines() if " -m pip install " in line]
    return line


@pytest.fixture
def with_gpu(tmp_path):
    "A PATH on which `nvidia-smi` exists."
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI 999'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    return f"{tmp_path}:{os.environ['PATH']}"


@pytest.fixture
def cpu_index(tmp_path):
    "A stand-in for PyTorch's CPU index: a web server with a torch/ page."
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>torch</a>")
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "--directory", str(tmp_path / "index")]
    with start_process(cmd, "index", f"http://{HOST}:{port}/torch/") as server:
        yield server.url.removesuffix("/torch/")


@pytest.mark.server
def test_no_gpu_and_the_cpu_index_answers(cpu_index, with_gpu):
    assert f"--extra-index-url {cpu_index} " in pip_install_line(TORCH_CPU_INDEX=cpu_index)
    assert "--extra-index-url" not in pip_install_line(TORCH_CPU_INDEX=cpu_index, FORCE_CUDA="1")
    assert "--extra-index-url" not in pip_install_line(TORCH_CPU_INDEX=cpu_index, PATH=with_gpu)


def test_an_index_that_refuses_is_left_out():
    line = pip_install_line(TORCH_CPU_INDEX=f"http://{HOST}:{free_port()}")  # nothing listens there
    assert "--extra-index-url" not in line and "-c constraints.txt" in line and "-e '.[dev]'" in line


@pytest.mark.slow  # waits out the probe's 3 s deadline
def test_an_index_that_never_answers_costs_at_most_the_probe():
    "A server that accepts the connection and then says nothing: the probe gives up at its deadline."
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen()
        url = f"http://{HOST}:{silent.getsockname()[1]}"
        r = subprocess.run(
            [sys.executable, ROOT / "tools" / "torch_index.py", "--explain"],
            capture_output=True,
            text=True,
            env={**os.environ, "TORCH_CPU_INDEX": url, "PATH": "/usr/bin:/bin"},
            timeout=15,  # the probe's own deadline is 3 s
        )
    assert r.returncode == 0 and r.stdout.strip() == ""
    assert f"{url} did not answer within 3 s" in r.stderr
