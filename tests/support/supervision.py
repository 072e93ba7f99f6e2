"""Running the real supervisord on a copy of the checkout's supervisord.conf."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from support.procs import REPO, scaled


class Supervisor:
    """supervisord -n on a copy of the checkout's supervisord.conf in a temp folder."""

    def __init__(self, root: Path, env: dict[str, str], fresh: bool = False, prefix: list[str] | None = None) -> None:
        if fresh:
            root.mkdir(parents=True)
        self.conf = root / "supervisord.conf"
        shutil.copy(REPO / "supervisord.conf", self.conf)
        # A second supervisord in the same folder finds the first one's run/,
        # as an operator restarting it would.
        (root / "run").mkdir(exist_ok=True)
        if not (root / "data").exists():
            (root / "data").symlink_to(REPO / "data")
        # supervisord execs rokv-broker and friends from PATH: the ones
        # installed next to this interpreter.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        self.log = open(root / "supervisord.out", "wb")
        # prefix: e.g. ip netns exec HOST, to run the whole pool on another host.
        self.popen = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=scaled(30),
        )

    def status(self) -> dict[str, tuple[str, int | None]]:
        """Process name -> (state, pid)."""
        states = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = int(parts[3].rstrip(",")) if len(parts) > 3 and parts[2] == "pid" else None
                states[parts[0]] = (parts[1], pid)
        return states

    def status_code(self) -> int:
        """What ``supervisorctl status`` exits with: 0 exactly when every
        program is RUNNING (or starting)."""
        return self.ctl("status").returncode

    def running(self) -> dict[str, int]:
        return {name: pid for name, (state, pid) in self.status().items() if state == "RUNNING" and pid}

    def shutdown(self) -> None:
        if self.popen.poll() is None:
            self.ctl("shutdown")
            try:
                self.popen.wait(scaled(30))
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(scaled(15))
        self.log.close()


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
