"""Start, control and stop the fake Matomo in its own process (benchmarks, multi-process tests).

process, url = start_fake_server(["--workers", "2"])
try:
    ... send to url + "matomo.php" ...
    print(fake_call(url, "_fake/stats"))
finally:
    stop_fake_server(process)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def start_fake_server(extra_args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m targets.fake_matomo --count-only`` on a free loopback port."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "targets.fake_matomo", "--count-only", "--host", "127.0.0.1", *(extra_args or [])],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        # Its own process group: with --workers N it forks, and stop_fake_server must end
        # the workers too (killing only the parent left them serving, and holding our pipes).
        start_new_session=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        stop_fake_server(process)
        raise RuntimeError(f"fake Matomo did not start (said {url!r})")
    return process, url


def stop_fake_server(process: subprocess.Popen) -> None:
    """Kill the fake server and all its worker processes (nothing to save: counters are read
    over HTTP before)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def fake_call(url: str, path: str, method: str = "GET") -> dict[str, Any]:
    """One control call to a fake server process (``_fake/stats``, ``_fake/reset``, ``_fake/faults``)."""
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url + path, method=method, data=data)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())
