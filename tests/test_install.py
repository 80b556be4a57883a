"""The lock, and `make install`, which installs it with every package checked against its hashes.

`make lock` (uv pip compile) writes requirements/runtime.txt (pyproject.toml's dependencies) and
requirements/dev.txt (those and the `dev` extra's): each version pinned with its hashes, for every
platform; torch is PyTorch's CPU build on Linux x86_64. The command `make install` would run is
read with `make -n`, so nothing is installed.
"""

import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LINUX = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
MACOS = {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"}


def locked(name: str) -> list[tuple[Requirement, list[str]]]:
    "The pins of requirements/`name`, each with its hashes (a pin may be split by markers into several)."
    text = (ROOT / "requirements" / name).read_text()
    entries = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2] if text.startswith("#") else text):
        lines = [ln.strip().rstrip("\\").strip() for ln in block.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if lines:
            hashes = [ln.removeprefix("--hash=") for ln in lines[1:] if ln.startswith("--hash=sha256:")]
            entries.append((Requirement(lines[0]), hashes))
    return entries


def pins_for(name: str, env: dict[str, str]) -> dict[str, Version]:
    "The version each package in requirements/`name` gets in the environment `env`."
    out = {}
    for req, _ in locked(name):
        if req.marker is None or req.marker.evaluate(env):
            assert canonicalize_name(req.name) not in out, f"{req.name} pinned twice for {env}"
            (spec,) = req.specifier
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def test_every_pin_is_exact_and_hashed():
    for name in ("runtime.txt", "dev.txt", "uv.txt"):
        for req, hashes in locked(name):
            assert [s.operator for s in req.specifier] == ["=="], f"{name}: {req} is not one exact version"
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}: {req}"


def test_every_dependency_is_pinned_within_its_range():
    "pyproject.toml's dependencies (and the dev extra's) are in the lock, at versions its ranges allow."
    groups = {"runtime.txt": PYPROJECT["project"]["dependencies"]}
    groups["dev.txt"] = groups["runtime.txt"] + PYPROJECT["project"]["optional-dependencies"]["dev"]
    for name, deps in groups.items():
        for env in (LINUX, MACOS):
            pins = pins_for(name, env)
            for dep in map(Requirement, deps):
                if canonicalize_name(dep.name) == "mlops-day28":  # the dev extra names the wandb extra
                    continue
                version = pins.get(canonicalize_name(dep.name))
                assert version is not None, f"{dep.name} is a dependency but not pinned in requirements/{name}"
                assert dep.specifier.contains(version, prereleases=True), f"{name}: {dep.name}=={version}, not {dep}"


def test_torch_is_the_cpu_build_of_2_13_0():
    "torch==2.13.0: PyTorch's CPU build (one local file's hash) on Linux x86_64, PyPI's wheels elsewhere."
    torch = [(req, hashes) for req, hashes in locked("runtime.txt") if req.name == "torch"]
    assert len(torch) == 2
    for env, version, files in ((LINUX, "2.13.0+cpu", 1), (MACOS, "2.13.0", 5)):
        ((req, hashes),) = [(r, h) for r, h in torch if r.marker.evaluate(env)]
        assert str(req.specifier) == f"=={version}"
        assert len(hashes) == files if version.endswith("+cpu") else len(hashes) > files  # PyPI: a wheel a platform
    linux = pins_for("runtime.txt", LINUX)
    assert linux["torch"].public == "2.13.0" and linux["torch"].local == "cpu"
    assert not [n for n in linux if n.startswith(("nvidia-", "triton", "cuda-"))], "the CUDA build's packages"


def test_dev_lock_is_the_runtime_lock_and_more():
    "requirements/dev.txt pins every package of requirements/runtime.txt at the same version, with the same hashes."
    for env in (LINUX, MACOS):  # dev may need a package on more platforms (a wider marker), never another version
        runtime, dev = pins_for("runtime.txt", env), pins_for("dev.txt", env)
        assert runtime.items() <= dev.items() and len(dev) > len(runtime)
    hashes = {
        name: {(canonicalize_name(r.name), str(r.specifier), tuple(sorted(h))) for r, h in locked(name)}
        for name in ("runtime.txt", "dev.txt")
    }
    assert hashes["runtime.txt"] <= hashes["dev.txt"]
    for name in ("pytest", "nbdev", "nbval", "ruff", "wandb"):
        assert name in pins_for("dev.txt", LINUX) and name not in pins_for("runtime.txt", LINUX)


def make_n(*targets: str, **env) -> list[str]:
    "The commands `make` would run for `targets` in this environment (`make -n`: nothing runs)."
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "TORCH_CPU"))}
    r = subprocess.run(
        ["make", "-n", "-W", "requirements/dev.txt", "-W", "requirements/uv.txt", *targets],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**environ, **env},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def install_line(**env) -> str:
    (line,) = [ln for ln in make_n(".venv/.installed", **env) if " pip install " in ln and " -r requirements/dev" in ln]
    return line


def test_make_install_checks_every_hash():
    lines = make_n(".venv/.installed")
    uv = [ln for ln in lines if "-m pip install" in ln]
    assert uv and all("--require-hashes -r requirements/uv.txt" in ln for ln in uv)  # uv itself, pinned
    line = install_line()
    assert line.startswith(".venv/bin/uv pip install ") and "--require-hashes" in line
    # uv writes no .pyc unless asked; with PYTHONDONTWRITEBYTECODE=1 every import would compile torch from source
    assert "--compile-bytecode" in line
    (editable,) = [ln for ln in lines if ln.endswith(" -e .")]
    assert "--no-deps" in editable and "--no-build-isolation" in editable  # nothing unpinned, no build downloads
    assert not [ln for ln in lines if "constraints.txt" in ln or "download.pytorch.org" in ln]


def test_torch_cpu_build_comes_from_the_declared_place():
    "The folder pyproject.toml's torch-cpu index names, where it exists; another place only when named."
    (index,) = [i for i in PYPROJECT["tool"]["uv"]["index"] if i["name"] == "torch-cpu"]
    assert PYPROJECT["tool"]["uv"]["sources"]["torch"]["index"] == "torch-cpu"
    folder = Path(index["url"])
    expected = f" --find-links {folder} " if folder.is_dir() else " --find-links "
    assert (expected in install_line()) == folder.is_dir()
    assert "--find-links" not in install_line(TORCH_CPU_WHEELS="")
    if folder.is_dir():  # these machines, and CI: the lock holds that very file's hash
        (wheel,) = folder.glob("torch-2.13.0+cpu-cp311-*.whl")
        torch = [h for r, h in locked("runtime.txt") if r.name == "torch" and r.marker.evaluate(LINUX)]
        assert torch == [["sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()]]
    url = "https://download.pytorch.org/whl/cpu/torch/"
    assert f" --find-links {url} -r requirements/dev.txt" in install_line(TORCH_CPU_WHEELS=url)


def test_make_lock_writes_the_three_files_with_the_pinned_uv():
    lines = make_n("lock")
    compiles = [ln for ln in lines if " pip compile " in ln]
    assert all("--universal --generate-hashes" in ln for ln in compiles)
    outputs = [ln.rsplit(" -o ", 1)[1] for ln in compiles]
    assert outputs == ["requirements/runtime.txt", "requirements/dev.txt", "requirements/uv.txt"]
    assert "-c requirements/runtime.txt" in compiles[1]  # dev keeps the runtime's versions
    (uv_pin,) = [req for req, _ in locked("uv.txt")]
    assert compiles[2].startswith(f"echo '{uv_pin}' | ")
