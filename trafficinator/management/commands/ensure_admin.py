"""manage.py ensure_admin: make sure a super user exists, for the one-command local setup."""

from __future__ import annotations

import os
import secrets
from argparse import ArgumentParser

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Create the admin super user if no super user exists. The password comes from "
        "TRAFFICINATOR_ADMIN_PASSWORD, or is generated and printed once."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--username", default=os.environ.get("TRAFFICINATOR_ADMIN_USER", "admin"))
        parser.add_argument("--email", default=os.environ.get("TRAFFICINATOR_ADMIN_EMAIL", ""))

    def handle(self, *args, username: str, email: str, **options) -> None:
        User = get_user_model()
        existing = User.objects.filter(is_superuser=True).order_by("pk").first()
        if existing is not None:
            name = existing.get_username()
            self.stdout.write(
                f"A super user exists already, nothing to do: log in as “{name}” with its password "
                f"(forgotten? `.venv/bin/python manage.py changepassword {name}`)."
            )
            return
        password = os.environ.get("TRAFFICINATOR_ADMIN_PASSWORD", "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        if generated:
            self.stdout.write(
                self.style.WARNING(
                    f"Created super user “{username}” with the password:  {password}\n"
                    "It is shown only this once: note it now, or change it with "
                    f"`manage.py changepassword {username}`."
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created super user “{username}” with the password from TRAFFICINATOR_ADMIN_PASSWORD."
                )
            )
