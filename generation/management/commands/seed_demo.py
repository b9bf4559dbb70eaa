"""Creates (or refreshes) a demo organisation, a class and one user of each role."""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import BaseClass, Organisation, Role
from accounts.services import membership_set

DEMO_USERS = {"demo-student": Role.STUDENT, "demo-teacher": Role.TEACHER, "demo-admin": Role.ADMIN}


class Command(BaseCommand):
    help = "Create a demo organisation, class and users (student, teacher, admin). Idempotent."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        org, _ = Organisation.objects.get_or_create(
            slug="demo-school", defaults={"name": "Demo School"}
        )
        BaseClass.objects.get_or_create(
            organisation=org, name="Year 9 Science", defaults={"subject": "Science"}
        )
        user_model = get_user_model()
        for username, role in DEMO_USERS.items():
            user, _ = user_model.objects.get_or_create(username=username)
            membership_set(user=user, organisation=org, role=role)
        admin = user_model.objects.get(username="demo-admin")
        # A fresh random password each run unless one is given: no fixed credential ships.
        password = os.environ.get("DEMO_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()
        self.stdout.write(f"Demo organisation '{org.name}' with users {', '.join(DEMO_USERS)}.")
        self.stdout.write(f"Admin login: demo-admin / {password}")
