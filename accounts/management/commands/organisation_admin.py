"""Make a user an organisation administrator in the admin (docs/admin.md)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organisation
from accounts.services import organisation_admin_make


class Command(BaseCommand):
    help = "Make USER staff scoped to ORGANISATION (slug): the admin role there and the group."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")
        parser.add_argument("organisation", help="the organisation's slug")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        organisation = Organisation.objects.filter(slug=options["organisation"]).first()
        if user is None or organisation is None:
            raise CommandError("no such user or organisation")
        if user.is_superuser:
            raise CommandError("a superuser sees every organisation; use a staff account")
        organisation_admin_make(user=user, organisation=organisation)
        self.stdout.write(f"{user} administers {organisation} in the admin")
