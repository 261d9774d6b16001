"""scripts/run as a user meets it in a terminal: it starts the web server and both worker
clusters, prints the URL (and password) last, and one Ctrl-C stops every process.

The script runs on a pseudo-terminal, so Ctrl-C is what a terminal really does: the line
discipline sends SIGINT to the whole foreground process group. Before the fix, the
script's trap then sent SIGTERM to the same processes ~1 ms later, which deadlocked
django-q2's signal handler in 3 of 8 tries."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from trafficinator.settings import BASE_DIR

STOP_WITHIN = 10.0  # seconds, after Ctrl-C
START_WITHIN = 120.0  # seconds; the first start migrates a new SQLite database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(session_id: int) -> list[str]:
    """Live (not zombie) processes of a session: the script and everything it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ...
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if int(session) == session_id and state != "Z":
            found.append(f"{entry.name} {stat.split(')')[0]})")
    return found


class Terminal:
    """scripts/run on its own pseudo-terminal (a new session whose leader is the script)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child becomes bash
            # A terminal's shell starts with SIGINT at its default and no signal blocked,
            # whatever this test process was left with: an ignored SIGINT survives exec,
            # and bash can neither trap nor reset a signal ignored on entry, so one Ctrl-C
            # then reaches nothing. That is what two CI runs showed (after the ^C no
            # "Stopping ...", every process still up); ignoring SIGINT in the parent
            # reproduces it exactly. Which earlier test in the worker leaves it ignored
            # was not found.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.chdir(BASE_DIR)
            os.execve("/bin/bash", ["bash", "scripts/run"], env)  # noqa: S606 - bash is the point
        self.output = b""

    def read_until(self, text: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536)
                except OSError:  # the script exited and the terminal closed
                    return text in self.output
        return text in self.output

    def read_until_count(self, text: bytes, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count and time.monotonic() < deadline:
            self.read_until(b"\0", 0.2)
        return self.output.count(text) >= count

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_until(b"\0", 0.1)  # keep draining so nobody blocks on a full terminal
            if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
                return True
        return False

    def kill(self) -> None:
        for pid in [int(line.split()[0]) for line in session_processes(self.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def run_env(tmp_path):
    if not (BASE_DIR / ".venv" / "bin" / "python").exists() or shutil.which("ps") is None:
        pytest.skip("needs the project's .venv (scripts/test makes it) and ps")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "PYTEST"))}
    env.pop("DATABASE_URL", None)  # always a fresh SQLite database of its own
    env.update(
        PORT=str(free_port()),
        TRAFFICINATOR_DATA_DIR=str(tmp_path),
        TRAFFICINATOR_ADMIN_PASSWORD="",
        TERM="dumb",
    )
    return env


def assert_url_and_password_come_last(output: str) -> None:
    password_at = output.index("with the password:")
    assert output.count("Q Cluster") >= 2  # both clusters said they run ...
    assert output.rindex("running.") < password_at  # ... before the password is shown,
    assert output.rstrip().endswith("(Ctrl-C to stop).")  # and the URL is the last line.


def test_one_ctrl_c_stops_every_process_every_time(run_env):
    for attempt in range(3):
        terminal = Terminal(run_env)
        try:
            started = terminal.read_until(b"(Ctrl-C to stop)", START_WITHIN)
            # Everything is up: the web server and both clusters with their workers.
            started = started and terminal.read_until_count(b"running.", 2, START_WITHIN)
            assert started, terminal.output.decode(errors="replace")[-3000:]
            if attempt == 0:  # a new database: the generated password is shown
                assert_url_and_password_come_last(terminal.output.decode(errors="replace"))
            terminal.ctrl_c()
            stopped = terminal.exited(STOP_WITHIN)
            deadline = time.monotonic() + STOP_WITHIN
            while session_processes(terminal.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = session_processes(terminal.pid)
            assert stopped and not left, (
                f"attempt {attempt + 1}: still running {left}\n" + terminal.output.decode(errors="replace")[-3000:]
            )
            assert b"Stopped." in terminal.output
        finally:
            terminal.kill()
