"""django-q2 tasks for live runs.

A loader needs gevent's monkey-patching, which must not happen inside the qcluster process
(measured: it breaks Django's DB connections and deadlocks the cluster). So the task only
claims the run and starts ``manage.py run_loader`` as a child process, then waits for it.
Loader tasks go to the "loaders" queue (settings.Q_CLUSTER["ALT_CLUSTERS"]), one per shard.
Its timeout exceeds the longest run, and so does django-q2's own ``retry``, so django-q2
never delivers again the task of a shard that is being sent. A task can still arrive more
than once: our brokers (trafficinator.taskqueue) enqueue again the task of a shard still
queued that has been missing from the broker for TASK_REDELIVER_AFTER_SECONDS (taken by a
cluster that died before running it), and the task of a shard handed back enqueues it once
more, in case its loader was killed before its own enqueue went out (below). The claim is a
conditional UPDATE, so a second copy finds its shard claimed, or the run over, and starts no
loader.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django_q.tasks import async_task

from runs.models import REAP_AFTER, Run, RunLog, RunShard

logger = logging.getLogger(__name__)

LOADER_QUEUE = "loaders"
MANAGE_PY = Path(settings.BASE_DIR) / "manage.py"
_PR_SET_PDEATHSIG = 1


def enqueue_loader(run_id: int, shard: int = 0) -> None:
    """One task per shard: each is claimed by whichever loader worker is free."""
    async_task("runs.tasks.execute_run", run_id, shard, cluster=LOADER_QUEUE, task_name=f"run-{run_id}-{shard + 1}")


def _child_setup() -> None:  # pragma: no cover - runs in the forked child before exec
    """Die with the parent (Linux parent-death signal) and yield CPU to web and workers."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.nice(5)


def loader_command(run_id: int, claim_token: str, *, hand_back: bool = False) -> list[str]:
    command = [sys.executable, str(MANAGE_PY), "run_loader", str(run_id), "--claim", claim_token]
    return [*command, "--hand-back"] if hand_back else command


def execute_run(run_id: int, shard: int | None = None) -> str:
    """Claim a shard of the run (``shard``, or the first one queued) and run its loader
    in a child process. A loader of a sharded run asked to exit (this worker shutting
    down) hands its shard back to the queue instead of stopping the run."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        return f"Run {run_id} no longer exists."
    token = run.claim(pid=os.getpid(), host=socket.gethostname(), shard=shard)
    if token is None:
        # Re-delivered task, or a run already stopped: never start a second loader.
        return f"Run {run_id} is {run.status}; not starting another loader."
    claimed = run.claimed_shard
    command = loader_command(run_id, str(token), hand_back=run.shard_count > 1)
    child = subprocess.Popen(command, preexec_fn=_child_setup)  # noqa: S603
    RunShard.objects.filter(pk=claimed.pk, claim_token=token).update(loader_pid=child.pid)
    try:
        code = _wait_forwarding_sigterm(child)
    finally:
        if child.poll() is None:  # we are going away (error, kill): take the loader along
            child.terminate()
            child.wait(timeout=30)
    run.refresh_from_db()
    # A loader that handed its shard back enqueued it for the next worker; should it have
    # been killed right after, enqueue it again (a second task finds it claimed: harmless).
    if RunShard.objects.filter(pk=claimed.pk, status=Run.Status.QUEUED, stream__continue=True).exists():
        enqueue_loader(run_id, claimed.index)
    # The loader ended without closing its run (crash, kill): say so instead of hanging.
    # Fenced by our claim: if the run was resumed meanwhile, another loader owns it now.
    if claimed.fail_claimed(token, f"The loader process exited with code {code} without finishing the run."):
        run.refresh_from_db()
        run.log(RunLog.Level.ERROR, f"Loader exited with code {code}.")
    return f"Run {run_id} shard {claimed.label}: run {run.status} (loader exit code {code})."


def _wait_forwarding_sigterm(child: subprocess.Popen) -> int:
    """Wait for the loader; django-q2 stops workers with SIGTERM and waits for their task,
    so pass SIGTERM on and the loader stops cleanly. Signal handlers can only be set from
    the main thread; elsewhere the parent-death signal still ends the child."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    except ValueError:
        return child.wait()
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def reap_stale_runs() -> int:
    """Scheduled: close runs whose loader has been silent for REAP_AFTER."""
    reaped = 0
    for run in Run.objects.stale(older_than=REAP_AFTER):
        minutes = int(REAP_AFTER.total_seconds() // 60)
        if run.fail(f"The loader was lost: no heartbeat for {minutes} minutes."):
            run.log(RunLog.Level.ERROR, "Closed by the reaper: loader lost.")
            reaped += 1
    return reaped
