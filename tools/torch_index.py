"""Which package index `make install` should take PyTorch from: prints pip arguments, or nothing.

PyPI's Linux wheels of torch are the CUDA build: several GB, with `nvidia-*` packages,
useless on a machine without an NVIDIA GPU. PyTorch's own CPU index has the same version
as `torch==X.Y.Z+cpu`, which `torch==X.Y.Z` in constraints.txt accepts and pip prefers.
So on Linux with no `nvidia-smi`, and unless FORCE_CUDA=1, this prints
`--extra-index-url <the CPU index>` when that index answers within PROBE_SECONDS.
Otherwise it prints nothing and pip uses the configured indexes (PyPI, or a mirror).

It never takes longer than PROBE_SECONDS (plus Python's start-up), whatever the network
does: the probe runs in a thread that is abandoned at the deadline.

Environment: TORCH_CPU_INDEX (default below), FORCE_CUDA=1 (keep the default index).
Run with --explain for the reason on stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PROBE_SECONDS = 3.0


def answers(url: str, seconds: float = PROBE_SECONDS) -> bool:
    "Whether a GET of `url` answers with a 2xx status within `seconds`, DNS lookup included."
    result: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=seconds) as r:
                result.append(200 <= r.status < 300)
        except Exception:  # any failure means: do not use it
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result and result[0])


def torch_index_args(env: dict[str, str] | None = None, platform: str = sys.platform) -> tuple[list[str], str]:
    "The pip arguments for PyTorch's index, and why."
    env = dict(os.environ if env is None else env)
    if env.get("FORCE_CUDA") == "1":
        return [], "FORCE_CUDA=1: PyTorch from the configured indexes"
    if not platform.startswith("linux"):
        return [], f"{platform}: PyPI's PyTorch wheels are already the CPU build here"
    if shutil.which("nvidia-smi", path=env.get("PATH")):
        return [], "nvidia-smi found: PyTorch's CUDA build from the configured indexes"
    index = env.get("TORCH_CPU_INDEX", CPU_INDEX).rstrip("/")
    if not answers(f"{index}/torch/"):
        return (
            [],
            f"no GPU, but {index} did not answer within {PROBE_SECONDS:.0f} s: PyTorch from the configured indexes",
        )
    return ["--extra-index-url", index], f"no GPU: PyTorch's CPU build from {index}"


if __name__ == "__main__":
    args, why = torch_index_args()
    if "--explain" in sys.argv:
        print(f"torch: {why}", file=sys.stderr)
    print(" ".join(args))
    sys.stdout.flush()
    os._exit(0)  # an abandoned probe thread must not keep the process alive
