"""manage.py health: the /health/ report on a terminal, and a worker container's health check."""

from __future__ import annotations

import json
from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from trafficinator import health


class Command(BaseCommand):
    help = (
        "Print the health report that /health/ serves (database, broker, worker clusters, "
        "queue depth, loader slots) as JSON; exit code 1 when something needed is down. "
        "With --local-cluster, only check that a django-q2 cluster is alive on this host "
        "(the health check of a worker container or pod)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--local-cluster",
            action="store_true",
            help="succeed only if a cluster on this host has sent a heartbeat in the last 3 s",
        )
        parser.add_argument("--queue", help="with --local-cluster: the cluster must serve this queue (e.g. loaders)")

    def handle(self, *args, local_cluster: bool, queue: str | None, **options) -> None:
        if local_cluster:
            clusters = health.local_clusters(queue)
            if not clusters:
                where = f" serving the {queue} queue" if queue else ""
                raise CommandError(f"No live django-q2 cluster{where} on this host.")
            self.stdout.write(json.dumps(clusters, indent=2))
            return
        healthy, body = health.report()
        self.stdout.write(json.dumps(body, indent=2))
        if not healthy:
            raise CommandError("Unhealthy: " + "; ".join(body["problems"]))
