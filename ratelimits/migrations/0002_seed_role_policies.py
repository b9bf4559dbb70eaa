"""Seeds the specification's limits per role; edit them later in the admin."""

from django.db import migrations

SPEC_POLICIES = {
    # role: (per minute, per hour, per day, concurrent jobs)
    "student": (2, 10, 50, 1),
    "teacher": (5, 30, 200, 3),
    "admin": (10, 100, 1000, 10),
}


def seed(apps, schema_editor):
    policy = apps.get_model("ratelimits", "RateLimitPolicy")
    for role, (minute, hour, day, concurrent) in SPEC_POLICIES.items():
        policy.objects.get_or_create(
            role=role,
            defaults={
                "per_minute": minute,
                "per_hour": hour,
                "per_day": day,
                "max_concurrent": concurrent,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("ratelimits", "RateLimitPolicy").objects.filter(
        role__in=list(SPEC_POLICIES)
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("ratelimits", "0001_rate_limit_tables")]

    operations = [migrations.RunPython(seed, unseed)]
