"""run_traffic on a terminal: its healthy progress line is plain text, not an error's red."""

import io
import logging

from runs.management.commands.run_traffic import Command


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_on_a_terminal_is_not_coloured_as_an_error():
    stderr = Terminal()
    command = Command(stdout=io.StringIO(), stderr=stderr, force_color=True)
    command.stderr.write("boom")  # what stderr looks like for a real error: red
    assert "\x1b[" in stderr.getvalue()
    stderr.seek(0)
    stderr.truncate()
    command.progress({"totals": {"visits_started": 3, "sent": 9, "accepted": 9, "hits_per_second": 1.5}})
    line = stderr.getvalue()
    assert line.startswith("\r") and "hits=9 accepted=9" in line and "\x1b[" not in line


def test_a_django_warning_reaches_the_console_once():
    # Django's default logging gives "django" a console handler of its own; with ours on the
    # root logger every warning was printed twice.
    assert logging.getLogger("django").handlers == []
    assert logging.getLogger("django").propagate and logging.getLogger().handlers
