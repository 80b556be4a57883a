"""Machines for tests: Linux network namespaces joined by veth pairs to a bridge in the first one.

Each namespace has its own interfaces, addresses and loopback, so a process in one reaches
another only over the network made here: 10.213.N.1 for the first ("the server"), then .2,
.3, ... The addresses exist only inside these namespaces. Needs root (`ip netns`).
Everything is removed by `close()`: the processes left inside (by pid, from `ip netns
pids`), the links and the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time


def netns_unavailable() -> str | None:
    "Why namespaces cannot be made here, or None."
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


class Machines:
    "`names[0]` holds the bridge (the server's machine); every other name is a machine linked to it."

    def __init__(self, names: list[str]):
        tag = secrets.token_hex(3)
        self.ns = {n: f"mlops-{n}-{tag}" for n in names}
        self.subnet = f"10.213.{int(tag[:2], 16)}"
        self.address = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(names)}
        self.links: list[str] = []
        self.procs: list[subprocess.Popen] = []
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        for n in names:
            _ip("netns", "add", self.ns[n])
            _ip("link", "set", "lo", "up", ns=self.ns[n])
        hub = self.ns[names[0]]
        _ip("link", "add", "br0", "type", "bridge", ns=hub)
        _ip("addr", "add", f"{self.address[names[0]]}/24", "dev", "br0", ns=hub)
        _ip("link", "set", "br0", "up", ns=hub)
        for i, n in enumerate(names[1:], 1):
            here, there = f"mv{i}{self.ns[n][-6:]}"[:15], f"mh{i}{self.ns[n][-6:]}"[:15]
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            self.links.append(here)
            _ip("link", "set", here, "netns", self.ns[n])
            _ip("link", "set", there, "netns", hub)
            _ip("link", "set", there, "master", "br0", ns=hub)
            _ip("link", "set", there, "up", ns=hub)
            _ip("addr", "add", f"{self.address[n]}/24", "dev", here, ns=self.ns[n])
            _ip("link", "set", here, "up", ns=self.ns[n])

    def command(self, name: str, cmd: list[str], hostname: str | None = None) -> list[str]:
        "`cmd` run in machine `name`'s namespace (with a host name of its own when `hostname` is given)."
        inner = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *cmd] if hostname else cmd
        return ["ip", "netns", "exec", self.ns[name], *inner]

    def run(
        self, name: str, cmd: list[str], timeout: float = 300, hostname: str | None = None, **kwargs
    ) -> subprocess.CompletedProcess:
        "Run `cmd` in machine `name` and wait (at most `timeout` s) for it."
        return subprocess.run(
            self.command(name, cmd, hostname), capture_output=True, text=True, timeout=timeout, **kwargs
        )

    def start(self, name: str, cmd: list[str], hostname: str | None = None, **kwargs) -> subprocess.Popen:
        "Start `cmd` in the background in machine `name`; stopped by `close()` if it still runs."
        p = subprocess.Popen(self.command(name, cmd, hostname), start_new_session=True, **kwargs)
        self.procs.append(p)
        return p

    def pids(self, name: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[name]], capture_output=True, text=True, timeout=30)
        return [int(x) for x in out.stdout.split()]

    def close(self) -> None:
        "Stop every process in the namespaces (SIGTERM, then SIGKILL after 10 s) and remove them and their links."
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._signal_all(signal.SIGTERM):
            time.sleep(0.5)
        self._signal_all(signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for n, ns in self.ns.items():
            if self._exists(n):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def _signal_all(self, sig: int) -> int:
        "Send `sig` to every process inside the namespaces; how many there were."
        pids = [pid for n in self.ns if self._exists(n) for pid in self.pids(n)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    def _exists(self, name: str) -> bool:
        return os.path.exists(f"/var/run/netns/{self.ns[name]}")

    def __enter__(self) -> Machines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
