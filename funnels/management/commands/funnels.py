"""manage.py funnels list|export|import|template: funnels from a terminal."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from funnels.library import create_from_template, templates
from funnels.models import Funnel
from funnels.transfer import FunnelImportError, export_queryset, import_funnels
from trafficinator.cli import usage_error


class Command(BaseCommand):
    help = "List, export, import and create funnels (JSON in the same format as the admin's import and export)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,export,import,template}")

        sub.add_parser("list", help="List funnels with their share, presets and steps.")

        export = sub.add_parser("export", help="Write funnels as JSON (all of them, or the ones named).")
        export.add_argument("names", nargs="*", metavar="NAME", help="Funnel names (default: every funnel).")
        export.add_argument("-o", "--output", metavar="FILE", help="Write to FILE instead of standard output.")

        load = sub.add_parser("import", help="Import funnels from JSON; nothing is saved if anything is wrong.")
        load.add_argument("file", metavar="FILE", help="A JSON file, or - for standard input.")
        load.add_argument("--replace", action="store_true", help="Overwrite funnels with the same name.")
        load.add_argument("--dry-run", action="store_true", help="Only validate; save nothing.")

        template = sub.add_parser("template", help="Create a disabled funnel from a template (no KEY: list them).")
        template.add_argument("key", nargs="?", metavar="KEY")

    def handle(self, *args, action: str, **options) -> None:
        getattr(self, f"handle_{action}")(**options)

    def handle_list(self, **_) -> None:
        funnels = Funnel.objects.prefetch_related("steps", "presets")
        if not funnels:
            self.stdout.write("No funnels. Create one in the admin, or: manage.py funnels template")
            return
        for funnel in funnels:
            self.stdout.write(
                f"{funnel.name}\t{'enabled' if funnel.enabled else 'disabled'}\tshare {funnel.share_percent}\t"
                f"priority {funnel.priority}\t{funnel.applies_to_label()}\t{len(funnel.steps.all())} steps"
            )

    def handle_export(self, *, names: list[str], output: str | None, **_) -> None:
        funnels = Funnel.objects.all()
        if names:
            found = set(funnels.filter(name__in=names).values_list("name", flat=True))
            missing = [name for name in names if name not in found]
            if missing:
                known = ", ".join(Funnel.objects.values_list("name", flat=True)) or "none yet"
                raise CommandError(f"No funnel named {', '.join(f'“{n}”' for n in missing)}. Known funnels: {known}.")
            funnels = funnels.filter(name__in=names)
        text = export_queryset(funnels)
        if output:
            Path(output).write_text(text, encoding="utf-8")
            self.stderr.write(self.style.SUCCESS(f"Exported {funnels.count()} funnel(s) to {output}."))
        else:
            self.stdout.write(text, ending="")

    def handle_import(self, *, file: str, replace: bool, dry_run: bool, **_) -> None:
        source = self.read_source(file)
        try:
            result = import_funnels(source, replace=replace, dry_run=dry_run)
        except FunnelImportError as exc:
            lines = "\n".join(f"  {problem}" for problem in exc.problems)
            raise usage_error(f"Nothing was imported; {len(exc.problems)} problem(s):\n{lines}") from None
        self.stdout.write(self.style.SUCCESS(result.summary(dry_run=dry_run)))

    def read_source(self, file: str) -> bytes:
        if file == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(file).read_bytes()
        except OSError as exc:
            raise usage_error(f"Cannot read {file}: {exc.strerror}.") from None

    def handle_template(self, *, key: str | None, **_) -> None:
        if not key:
            for template in templates():
                self.stdout.write(f"{template.key}\t{template.name}\t{' → '.join(template.step_labels)}")
            return
        try:
            funnel = create_from_template(key)
        except KeyError:
            keys = ", ".join(template.key for template in templates())
            raise CommandError(f"No funnel template “{key}”. Templates: {keys}.") from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Created “{funnel.name}” ({funnel.steps.count()} steps), disabled; enable it when ready."
            )
        )
