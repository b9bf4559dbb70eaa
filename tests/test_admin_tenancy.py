"""Admin tenancy (issue 21, items 2 and 3): every admin action declares its permission, so view-only
staff cannot cancel, resume, retry or regenerate; an organisation administrator sees and acts on
nothing of another organisation in ANY admin page (every ModelAdmin in admin.site._registry,
found programmatically, so a new admin is covered); the dashboard and /metrics need named
permissions."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db.models import Model
from django.test import Client
from django.urls import NoReverseMatch, reverse

from accounts.models import BaseClass, Organisation, Role
from accounts.services import organisation_admin_make, organisation_admins_group_sync
from accounts.tenancy import OrganisationScoped
from generation.models import CourseGenerationJob, GenerationTask, JobStatus, TaskStatus
from generation.schemas import TaskKind
from monitoring.logs import installed_handlers
from monitoring.models import Alert, AlertKind
from monitoring.services import alert_raise
from ratelimits.models import OrganisationBudget, RateLimitViolation, Window
from tests.courses import finished_job
from tests.factories import BaseClassFactory, MembershipFactory, OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

MARK = "borealis"  # in every name, topic and message of the other organisation


@pytest.fixture(autouse=True)
def quiet(settings: Any) -> None:
    settings.COURSEGEN_JUDGE_ENABLED = True  # judge runs and their ledger rows exist too


def _member(org: Organisation, role: Role, username: str) -> Any:
    user = UserFactory.create(username=username)
    MembershipFactory.create(user=user, organisation=org, role=role)
    return user


def _world(org: Organisation, prefix: str) -> CourseGenerationJob:
    """An organisation's rows of every kind the admin shows."""
    base_class = BaseClassFactory.create(organisation=org, name=f"{prefix} class")
    teacher = _member(org, Role.TEACHER, f"{prefix}-teacher")
    job = finished_job(teacher, base_class, topic=f"{prefix} rivers")
    failed = finished_job(teacher, base_class, topic=f"{prefix} valleys")
    task = failed.tasks.get(kind=TaskKind.METADATA)
    GenerationTask.objects.filter(pk=task.pk).update(status=TaskStatus.FAILED)
    CourseGenerationJob.objects.filter(pk=failed.pk).update(status=JobStatus.FAILED)
    OrganisationBudget.objects.create(organisation=org, monthly_usd=Decimal(100))
    alert_raise(
        kind=AlertKind.CONTENT_FLAGGED,
        subject=f"job:{job.pk}",
        message=f"{prefix}-teacher's request was flagged",
        organisation_id=org.pk,
    )
    RateLimitViolation.objects.create(
        user=teacher,
        role=Role.TEACHER,
        window=Window.MINUTE,
        limit=1,
        used=1,
        retry_after_s=1,
        at=job.created_at,
    )
    return job


def _ids() -> dict[type[Model], set[Any]]:
    for handler in installed_handlers():  # log rows are written in batches: all of them now
        handler.flush()
    return {
        model: set(model._default_manager.values_list("pk", flat=True))
        for model in admin.site._registry
    }


@pytest.fixture
def two_organisations() -> dict[str, Any]:
    organisation_admins_group_sync()
    home = OrganisationFactory.create(name="Home school", slug="home")
    org_admin = _member(home, Role.ADMIN, "home-admin")
    organisation_admin_make(user=org_admin, organisation=home)
    home_job = _world(home, "home")
    before = _ids()
    other = OrganisationFactory.create(name=f"{MARK.title()} Academy", slug=MARK)
    other_job = _world(other, MARK)
    theirs = {model: ids - before.get(model, set()) for model, ids in _ids().items()}
    return {
        "home": home,
        "other": other,
        "org_admin": org_admin,
        "home_job": home_job,
        "other_job": other_job,
        "theirs": theirs,
    }


def _url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def _maybe_url(model: type[Model], view: str) -> str | None:
    try:
        return _url(model, view)
    except NoReverseMatch:
        return None


def _login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


# --- Organisation administrators ------------------------------------------------------------------
def test_an_organisation_admin_sees_no_other_organisations_objects_in_any_admin_page(
    two_organisations: dict[str, Any],
) -> None:
    org_admin = two_organisations["org_admin"]
    # Whatever permissions a platform operator grants them on top, the scope holds.
    org_admin.user_permissions.add(*Permission.objects.all())
    org_admin = get_user_model().objects.get(pk=org_admin.pk)
    client = _login(org_admin)
    theirs: dict[type[Model], set[Any]] = two_organisations["theirs"]
    covered = []

    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, OrganisationScoped), model
        label = model._meta.label
        changelist = client.get(_url(model, "changelist"))
        assert changelist.status_code in (200, 403), label
        if changelist.status_code == 200:
            shown = set(changelist.context["cl"].queryset.values_list("pk", flat=True))
            assert not shown & theirs[model], f"{label} shows another organisation's rows"
            assert MARK not in changelist.content.decode().lower(), label
            covered.append(label)
        add = _maybe_url(model, "add")
        if add is not None:
            page = client.get(add)
            assert page.status_code in (200, 403), label
            assert MARK not in page.content.decode().lower(), f"{label}: choices leak"
        for pk in theirs[model]:
            change = client.get(_url(model, "change", pk))
            assert change.status_code in (403, 404), f"{label} {pk}: {change.status_code}"
            delete = client.post(_url(model, "delete", pk), {"post": "yes"})
            assert delete.status_code in (403, 404), f"{label} {pk}: delete"
        assert model._default_manager.filter(pk__in=theirs[model]).count() == len(theirs[model])

    # The sweep met the organisation-scoped pages with rows on both sides.
    for label in (
        "generation.CourseGenerationJob",
        "generation.GenerationTask",
        "generation.GenerationAttempt",
        "monitoring.Alert",
        "monitoring.CourseGenerationLog",
        "accounts.Organisation",
        "auth.User",
    ):
        assert label in covered
    assert theirs[CourseGenerationJob] and theirs[Alert]


def test_an_organisation_admin_sees_and_acts_on_their_own(
    two_organisations: dict[str, Any],
) -> None:
    client = _login(two_organisations["org_admin"])
    home_job, other_job = two_organisations["home_job"], two_organisations["other_job"]

    jobs = client.get("/admin/generation/coursegenerationjob/")
    page = client.get(f"/admin/generation/coursegenerationjob/{home_job.pk}/change/")
    dashboard = client.get("/admin/").content.decode()
    # A forged action on the other organisation's job and on their own.
    client.post(
        "/admin/generation/coursegenerationjob/",
        {"action": "cancel_jobs", "_selected_action": [str(other_job.pk)]},
    )

    assert jobs.status_code == 200 and "home rivers" in jobs.content.decode()
    assert page.status_code == 200
    assert 'id="organisation-scope"' in dashboard and "Home school" in dashboard
    assert MARK not in dashboard.lower()
    assert 'id="provider-stats"' not in dashboard  # platform-wide figures are not theirs
    assert CourseGenerationJob.objects.get(pk=other_job.pk).status == JobStatus.SUCCEEDED
    assert client.get("/metrics").status_code == 403
    assert client.get(f"/courses/{other_job.pk}/").status_code == 404


def test_an_organisation_admin_picks_only_their_own_users_in_an_inline_form(
    two_organisations: dict[str, Any],
) -> None:
    """The membership inline of the Organisation page: permissions added to the group widen
    what they may do, never whose rows they may pick (docs/admin.md)."""
    home, org_admin = two_organisations["home"], two_organisations["org_admin"]
    org_admin.user_permissions.add(
        Permission.objects.get(content_type__app_label="accounts", codename="change_organisation")
    )
    outsider = get_user_model().objects.get(username=f"{MARK}-teacher")
    student = _member(home, Role.STUDENT, "home-student")
    existing = list(home.memberships.order_by("pk"))
    client = _login(org_admin)
    url = _url(Organisation, "change", home.pk)

    def post(rows: list[tuple[Any, Any, str]]) -> Any:
        data: dict[str, Any] = {
            "name": home.name,
            "slug": home.slug,
            "memberships-TOTAL_FORMS": str(len(rows)),
            "memberships-INITIAL_FORMS": str(len(existing)),
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        }
        for n, (pk, user_id, role) in enumerate(rows):
            data |= {
                f"memberships-{n}-id": str(pk),
                f"memberships-{n}-organisation": str(home.pk),
                f"memberships-{n}-user": str(user_id),
                f"memberships-{n}-role": role,
            }
        return client.post(url, data)

    rows = [(m.pk, m.user_id, m.role) for m in existing]
    refused = post([*rows, ("", outsider.pk, Role.ADMIN)])
    assert refused.status_code == 200  # the form again, with the error
    assert "Select a valid choice" in refused.content.decode()
    assert not home.memberships.filter(user=outsider).exists()
    # their own members stay valid choices: a student made a teacher
    promoted = [
        (pk, user_id, Role.TEACHER if user_id == student.pk else r) for pk, user_id, r in rows
    ]
    assert post(promoted).status_code == 302
    assert home.memberships.get(user=student).role == Role.TEACHER


# --- Actions and their permissions ----------------------------------------------------------------
PAID_OR_DESTRUCTIVE = {
    "generation.CourseGenerationJob": ["cancel_jobs", "resume_jobs"],
    "generation.GenerationTask": ["retry_tasks", "regenerate_tasks"],
}


def test_every_admin_action_declares_its_permissions() -> None:
    for model, model_admin in admin.site._registry.items():
        for action in model_admin.actions or ():
            func = getattr(model_admin, action) if isinstance(action, str) else action
            assert getattr(func, "allowed_permissions", None), (model._meta.label, action)
    for label, names in PAID_OR_DESTRUCTIVE.items():
        model_admin = next(a for m, a in admin.site._registry.items() if m._meta.label == label)
        for name in names:
            assert "view" not in getattr(model_admin, name).allowed_permissions


def test_view_only_staff_cannot_cancel_resume_retry_or_regenerate(
    two_organisations: dict[str, Any],
) -> None:
    viewer = get_user_model().objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_coursegenerationjob", "view_generationtask"])
    )
    client = _login(viewer)
    job = two_organisations["home_job"]
    failed = CourseGenerationJob.objects.get(status=JobStatus.FAILED, organisation=job.organisation)
    failed_task = failed.tasks.get(status=TaskStatus.FAILED)
    done_task = job.tasks.get(kind=TaskKind.METADATA)
    versions = done_task.versions.count()

    jobs_page = client.get("/admin/generation/coursegenerationjob/").content.decode()
    tasks_page = client.get("/admin/generation/generationtask/").content.decode()
    forged = [
        ("coursegenerationjob", "cancel_jobs", job.pk),
        ("coursegenerationjob", "resume_jobs", failed.pk),
        ("generationtask", "retry_tasks", failed_task.pk),
        ("generationtask", "regenerate_tasks", done_task.pk),
    ]
    for model_name, action, pk in forged:
        client.post(
            f"/admin/generation/{model_name}/", {"action": action, "_selected_action": [str(pk)]}
        )

    for name in ("cancel_jobs", "resume_jobs"):
        assert f'value="{name}"' not in jobs_page
    for name in ("retry_tasks", "regenerate_tasks"):
        assert f'value="{name}"' not in tasks_page
    assert 'value="export_md"' in jobs_page  # what view rights allow stays
    assert CourseGenerationJob.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    assert CourseGenerationJob.objects.get(pk=failed.pk).status == JobStatus.FAILED
    assert GenerationTask.objects.get(pk=failed_task.pk).status == TaskStatus.FAILED
    assert done_task.versions.count() == versions


# --- Named permissions for the platform-wide views ------------------------------------------------
def test_the_dashboard_and_metrics_need_their_named_permissions(
    two_organisations: dict[str, Any],
) -> None:
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    client = _login(staff)
    before = (client.get("/admin/").content.decode(), client.get("/metrics").status_code)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_dashboard", "view_metrics"])
    )
    staff = get_user_model().objects.get(pk=staff.pk)
    client = _login(staff)
    after = (client.get("/admin/").content.decode(), client.get("/metrics").status_code)

    assert 'id="cg-dashboard"' not in before[0] and before[1] == 403
    assert 'id="cg-dashboard"' in after[0] and after[1] == 200
    assert 'id="provider-stats"' in after[0]  # a platform operator sees the platform
    assert MARK.title() in after[0]  # every organisation's budget


def test_every_admin_is_scoped_and_an_undeclared_one_is_platform_only(
    two_organisations: dict[str, Any], rf: Any
) -> None:
    org_admin = two_organisations["org_admin"]
    request = rf.get("/admin/")
    request.user = org_admin
    undeclared: Callable[..., Any] = type("Undeclared", (OrganisationScoped, admin.ModelAdmin), {})
    model_admin = undeclared(BaseClass, admin.site)

    assert not model_admin.get_queryset(request).exists()
    assert not model_admin.has_view_permission(request)
    assert not model_admin.has_module_permission(request)
