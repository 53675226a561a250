"""Server processes owned by the stack: spawned with a log, health-waited, stopped by signal.

Every server process gets a parent-death signal, so a crashed or killed owner never leaves
servers running behind it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fraudstream.core.errors import FraudstreamError

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class StackError(FraudstreamError):
    """An embedded server could not be started or did not become healthy."""


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (the server binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _dying_with_parent(sig: signal.Signals) -> Callable[[], None]:
    def set_parent_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))

    return set_parent_death_signal


def primary_group(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd  # noqa: PLC0415 - POSIX only, and only needed when switching users

    return pwd.getpwnam(user).pw_gid


class ServerProcess:
    """One server process: started with its output in a log file, stopped by a signal."""

    def __init__(self, name: str, log: Path, stop_signal: signal.Signals) -> None:
        self.name = name
        self.log = log
        self.stop_signal = stop_signal
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def spawn(self, argv: list[str], *, user: str | None = None, cwd: Path | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - argv is ours, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            user=user,
            group=primary_group(user),
            extra_groups=None if user is None else [],  # root's groups stay behind too
            cwd=cwd,
            preexec_fn=_dying_with_parent(self.stop_signal),  # noqa: PLW1509
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def check_alive(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self._process.returncode} while starting; "
                f"last lines of {self.log}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to shut down cleanly; kill it if it has not within `timeout`."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(self.stop_signal)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for tests of what survives one)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
        self._close()

    def _close(self) -> None:
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def wait_until(ready: Callable[[], bool], process: ServerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        with contextlib.suppress(Exception):
            if ready():
                return
        if time.monotonic() > deadline:
            raise StackError(
                f"{process.name} did not become ready within {timeout:.0f} s; "
                f"last lines of {process.log}:\n{process.log_tail()}"
            )
        time.sleep(0.1)
