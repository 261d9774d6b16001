"""manage.py target add|list|check|prepare: targets from a terminal."""

from __future__ import annotations

import sys
from argparse import ArgumentParser

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from targets.checks import run_check
from targets.models import MAX_SITE_ID, Target
from targets.prepare import prepare_site
from trafficinator.cli import get_preset, get_target, usage_error, validation_error
from trafficinator.traffic import Catalog


class Command(BaseCommand):
    help = "Add, list and check Matomo targets."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{add,list,check,prepare}")

        add = sub.add_parser("add", help="Add a target (validated like the admin form).")
        add.add_argument("--name", required=True)
        add.add_argument("--url", required=True, help="Matomo URL, e.g. https://matomo.example.com/")
        # A plain int: the range is the model's, reported with every other invalid field.
        add.add_argument("--site-id", required=True, type=int, help=f"Matomo's idsite (1 to {MAX_SITE_ID:,}).")
        add.add_argument(
            "--token-stdin",
            action="store_true",
            help="Read token_auth from standard input (never from the command line, where it would be logged).",
        )
        add.add_argument("--disabled", action="store_true", help="Add it disabled.")
        add.add_argument("--check", action="store_true", help="Check the connection right after adding.")

        sub.add_parser("list", help="List targets and their last check.")

        check = sub.add_parser("check", help="Check the connection to a target and store what Matomo says.")
        check.add_argument("name", nargs="?", help="Target name (omit with --all).")
        check.add_argument("--all", action="store_true", help="Check every enabled target.")

        prepare = sub.add_parser(
            "prepare",
            help="Create the catalog's goals in the Matomo site and turn on ecommerce and site search (token needed).",
        )
        prepare.add_argument("name", help="Target name.")
        prepare.add_argument(
            "--preset", help="Use this preset's catalog (its goal overrides); default catalog if omitted."
        )
        prepare.add_argument("--no-goals", action="store_true", help="Do not create goals.")
        prepare.add_argument("--no-ecommerce", action="store_true", help="Leave the ecommerce switch as it is.")
        prepare.add_argument("--no-site-search", action="store_true", help="Leave the site search switch as it is.")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"handle_{action}")(**options)

    def handle_add(
        self, *, name: str, url: str, site_id: int, token_stdin: bool, disabled: bool, check: bool, **_
    ) -> None:
        token = self.read_token() if token_stdin else ""
        target = Target(name=name, matomo_url=url, site_id=site_id, token_auth=token, enabled=not disabled)
        try:
            target.full_clean()
        except ValidationError as exc:
            raise validation_error(exc) from None
        target.save()
        self.stdout.write(
            self.style.SUCCESS(
                f"Added target “{target.name}” → {target.tracking_url} site {target.site_id}"
                f" ({'with' if target.has_token else 'without'} token)."
            )
        )
        if check and not self.check_one(target):
            raise CommandError(f"Target “{target.name}” was added, but its connection check failed.")

    def read_token(self) -> str:
        if sys.stdin.isatty():
            self.stderr.write("Paste the token_auth and press Enter: ", ending="")
        token = sys.stdin.readline().strip()
        if not token:
            raise usage_error("--token-stdin was given but standard input had no token.")
        return token

    def handle_list(self, **_) -> None:
        targets = list(Target.objects.all())
        if not targets:
            self.stdout.write("No targets. Add one with: manage.py target add --name N --url U --site-id S")
            return
        for target in targets:
            learned = f" “{target.site_name}” {target.site_timezone}" if target.site_name else ""
            self.stdout.write(
                f"{target.name}\t{target.matomo_url}\tsite {target.site_id}{learned}\t"
                f"token={'set' if target.has_token else 'none'}\t"
                f"{'enabled' if target.enabled else 'disabled'}\tcheck={target.check_status}"
            )

    def handle_check(self, *, name: str | None, all: bool, **_) -> None:
        if all == bool(name):
            raise usage_error("Give one target name, or --all.")
        targets = [get_target(name)] if name else list(Target.objects.enabled())
        failed = [target for target in targets if not self.check_one(target)]
        if failed:
            raise CommandError(f"{len(failed)} of {len(targets)} check(s) failed.")

    def check_one(self, target: Target) -> bool:
        result = run_check(target)
        for step in result.steps:
            self.stdout.write(f"  ✓ {step}")
        style = self.style.SUCCESS if result.ok else self.style.ERROR
        self.stdout.write(style(f"{target.name}: {result.message}"))
        return result.ok

    def handle_prepare(
        self, *, name: str, preset: str | None, no_goals: bool, no_ecommerce: bool, no_site_search: bool, **_
    ) -> None:
        target = get_target(name)
        catalog = get_preset(preset).catalog() if preset else Catalog.load_default()
        result = prepare_site(
            target, catalog, goals=not no_goals, ecommerce=not no_ecommerce, site_search=not no_site_search
        )
        for line in result.done:
            self.stdout.write(f"  ✓ created: {line}" if line.startswith("goal") else f"  ✓ {line}")
        if result.ok and not result.done:
            self.stdout.write("  Nothing to do: the site already has the catalog's goals and switches.")
        if result.check is not None and result.check.ok:
            self.stdout.write(f"  {_goals_line(target)}")
        if not result.ok:
            raise CommandError(f"{target.name}: " + " ".join(result.problems))
        self.stdout.write(self.style.SUCCESS(f"{target.name}: the site is ready for the catalog's traffic."))


def _goals_line(target: Target) -> str:
    goals = target.goal_map() or {}
    listed = ", ".join(f"{idgoal} “{goal}”" for idgoal, goal in sorted(goals.items())) or "none"
    return f"Site goals now: {listed}; ecommerce {'on' if target.site_ecommerce else 'off'}."
