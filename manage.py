#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import sys

# Commands that send traffic run on gevent and must be monkey-patched before anything
# else (Django, sockets, threading) is imported. Only these: patching the web server or a
# qcluster breaks Django's DB connections (docs/architecture.md, "Processes").
GEVENT_COMMANDS = {"run_loader", "run_traffic"}
if len(sys.argv) > 1 and sys.argv[1] in GEVENT_COMMANDS:
    from gevent import monkey

    monkey.patch_all()

import os  # noqa: E402


def main():
    """Run administrative tasks."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trafficinator.settings")
    try:
        from django.core.management import execute_from_command_line
    except ImportError as exc:
        raise ImportError(
            "Couldn't import Django. Are you sure it's installed and "
            "available on your PYTHONPATH environment variable? Did you "
            "forget to activate a virtual environment?"
        ) from exc
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
