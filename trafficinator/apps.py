from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


def create_cache_table(sender, using: str = "default", **kwargs) -> None:
    """`migrate` also creates the shared cache's table (settings.CACHES), so one command
    prepares a database; createcachetable skips a table that exists."""
    if sender.label == "django_q":  # post_migrate is sent once per app; one call is enough
        call_command("createcachetable", database=using, verbosity=0)


class TrafficinatorConfig(AppConfig):
    name = "trafficinator"

    def ready(self) -> None:
        from trafficinator.health import install_queue_stats
        from trafficinator.taskqueue import install_loader_shutdown

        install_queue_stats()
        install_loader_shutdown()
        post_migrate.connect(create_cache_table, dispatch_uid="trafficinator-create-cache-table")
