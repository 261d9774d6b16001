"""What live runs and backfill plans share about their lifecycles, written once.

- ``transition``: a status change as one conditional UPDATE (``... WHERE status IN
  (<allowed>)``), so of two processes trying the same change exactly one wins;
- ``actor``: who did something, as log entries and end reasons name them;
- ``LogEntry``: the fields and levels of ``RunLog`` and ``BackfillLog``.

The side effects of a transition (its log entry, what gets enqueued) belong in the
model method that makes it, never in a view or the admin, so every caller gets them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import models
from django.utils import timezone

COMMAND_LINE = "the command line"


def actor(by: Any = None) -> str:
    """Who did it: a user's username, a name given as text, or else "the command line".
    Pages, the admin and the API always pass the user, so nobody named means a
    management command; one wording for it everywhere, so the same action reads the
    same in every log."""
    if isinstance(by, str):
        return by or COMMAND_LINE
    return getattr(by, "username", "") or COMMAND_LINE


def transition(instance: models.Model, from_statuses: Iterable[str], **changes: Any) -> bool:
    """Apply ``changes`` to ``instance``'s row if its status is one of ``from_statuses``.
    Returns whether this caller won; the winner's instance is refreshed from the row."""
    manager = type(instance)._default_manager
    updated = manager.filter(pk=instance.pk, status__in=list(from_statuses)).update(**changes)
    if updated:
        instance.refresh_from_db()
    return bool(updated)


class LogEntry(models.Model):
    """A notable event of a run or plan (never one row per hit). Subclasses add the
    foreign key to their owner, the target, and their own index."""

    class Level(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    created_at = models.DateTimeField(default=timezone.now)
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.INFO)
    message = models.TextField()

    class Meta:
        abstract = True
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message}"
