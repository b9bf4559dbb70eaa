"""A/B experiments: assignment by job id, variants on task rows, the report with intervals,
stop and promote (the default from then on), the read-only API and the admin report page."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.models import Role
from accounts.services import organisation_admin_make
from generation.models import (
    ExperimentStatus,
    ExperimentVariant,
    Promotion,
)
from generation.quality import experiments, report
from generation.quality.experiments import VariantSpec
from generation.quality.stats import Interval, bootstrap_mean
from generation.services import GenerationError
from generation.variants import assign
from ratelimits.models import RateLimitPolicy
from tests.browser import chromium_or_skip, run_node, screenshot_path
from tests.courses import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


def make_experiment(
    kind: str = "lesson_section", *, candidate: VariantSpec | None = None, start: bool = True
) -> Any:
    experiment = experiments.experiment_create(
        name=f"exp-{uuid.uuid4().hex[:6]}",
        task_kind=kind,
        variants=[
            VariantSpec("control"),
            candidate or VariantSpec("candidate", prompt_version="v3", model="gpt-4.1"),
        ],
        primary_metric="judge_objectives_taught",
    )
    if start:
        experiments.experiment_start(experiment_id=experiment.pk)
    return experiment


@pytest.fixture(autouse=True)
def many_courses(rate_limit_policies: None) -> None:
    # These tests make more courses per minute than a teacher's policy allows.
    RateLimitPolicy.objects.filter(role=Role.TEACHER).update(
        per_minute=1000, per_hour=1000, per_day=1000
    )


@pytest.fixture
def staff() -> Any:
    return get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")


# --- Assignment and planning ----------------------------------------------------------------------
def test_it_assigns_a_job_the_same_variant_every_time_in_proportion_to_the_weights() -> None:
    experiment = experiments.experiment_create(
        name="weights",
        task_kind="",
        variants=[VariantSpec("a"), VariantSpec("b"), VariantSpec("c", weight=2)],
    )
    variants = sorted(experiment.variants.all(), key=lambda v: v.pk)
    jobs = [uuid.uuid4() for _ in range(4000)]

    counts = Counter(assign(experiment, variants, job).name for job in jobs)

    again = [assign(experiment, variants, job).name for job in jobs[:50]]
    assert again == [assign(experiment, variants, job).name for job in jobs[:50]]
    assert abs(counts["a"] / 4000 - 0.25) < 0.03 and abs(counts["c"] / 4000 - 0.5) < 0.03


def test_every_task_in_scope_records_its_variant_and_uses_its_prompt_and_model(
    teacher: Any, base_class: Any
) -> None:
    experiment = make_experiment()
    variants = {v.pk: v for v in experiment.variants.all()}
    seen: set[str] = set()

    # Assignment hashes the random job id, so six jobs all landed on one variant about one run in
    # 32: go on until both were seen (at most 24 jobs: a 2**-23 chance of failing by luck).
    for n in range(24):
        if seen == {"control", "candidate"} and n >= 4:
            break
        job = finished_job(teacher, base_class, topic=f"Glaciers {n}")
        sections = list(job.tasks.filter(kind="lesson_section"))
        [variant_id] = {t.variant_id for t in sections}  # one variant per job
        variant = variants[variant_id]
        seen.add(variant.name)
        expected_model = variant.model or settings.COURSEGEN_MODEL_COMPLEX
        assert {t.model for t in sections} == {expected_model}
        assert {t.prompt_version for t in sections} == {variant.prompt_version or "v2"}
        others = job.tasks.exclude(kind="lesson_section")
        assert not others.filter(variant__isnull=False).exists()
        if variant.prompt_version == "v3":  # the simulator followed v3: an example per objective
            example = sections[0].output["examples"][0]["title"]  # type: ignore[index]
            assert example.startswith("Practising:")

    assert seen == {"control", "candidate"}


def test_an_experiment_on_the_outline_reaches_the_task_created_at_submit(
    teacher: Any, base_class: Any
) -> None:
    experiment = make_experiment("outline", candidate=VariantSpec("big", model="gpt-4.1"))
    variants = {v.pk: v for v in experiment.variants.all()}

    outlines = [
        finished_job(teacher, base_class, topic=f"Deserts {n}").tasks.get(kind="outline")
        for n in range(4)
    ]

    assert all(t.variant_id in variants for t in outlines)
    for task in outlines:
        variant = variants[task.variant_id or 0]
        assert task.model == (variant.model or settings.COURSEGEN_MODEL_COMPLEX)


# --- Validation and lifecycle ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "variants", "message"),
    [
        ("assessment", [VariantSpec("a"), VariantSpec("b", prompt_version="v3")], "does not exist"),
        ("", [VariantSpec("a"), VariantSpec("b", prompt_version="v3")], "does not exist for"),
        ("lesson_section", [VariantSpec("a"), VariantSpec("b", model="my-llm")], "no price"),
        ("lesson_section", [VariantSpec("a")], "at least two"),
        ("lesson_section", [VariantSpec("a"), VariantSpec("a", model="gpt-4.1")], "differ"),
        ("poems", [VariantSpec("a"), VariantSpec("b")], "unknown task kind"),
    ],
)
def test_it_refuses_experiments_that_cannot_run(
    kind: str, variants: list[VariantSpec], message: str
) -> None:
    with pytest.raises(GenerationError, match=message):
        experiments.experiment_create(name="bad", task_kind=kind, variants=variants)


def test_one_running_experiment_per_task_kind() -> None:
    make_experiment("lesson_section")

    with pytest.raises(GenerationError, match="already covers"):
        make_experiment("lesson_section")
    with pytest.raises(GenerationError, match="already covers"):
        make_experiment("", candidate=VariantSpec("cheap", model="gpt-4.1-nano"))
    make_experiment("assessment", candidate=VariantSpec("big", model="gpt-4.1"))


def test_promoting_a_variant_makes_it_the_default_from_then_on(
    teacher: Any, base_class: Any, staff: Any
) -> None:
    experiment = make_experiment()
    finished_job(teacher, base_class, topic="Before the promotion")
    candidate = experiment.variants.get(name="candidate")

    promotion = experiments.variant_promote(variant_id=candidate.pk, by=staff)
    job = finished_job(teacher, base_class, topic="After the promotion")

    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.STOPPED and experiment.stopped_by == staff
    assert promotion.promoted_by == staff and promotion.promoted_at is not None
    assert (promotion.prompt_version, promotion.model) == ("v3", "gpt-4.1")
    sections = job.tasks.filter(kind="lesson_section")
    chosen = {(t.prompt_version, t.model, t.variant_id) for t in sections}
    assert chosen == {("v3", "gpt-4.1", None)}
    assert {t.model for t in job.tasks.filter(kind="assessment")} == {
        settings.COURSEGEN_MODEL_COMPLEX
    }


# --- The report -----------------------------------------------------------------------------------
def test_bootstrap_intervals_cover_the_mean_and_separate_different_samples() -> None:
    low = bootstrap_mean([0.2, 0.3, 0.25, 0.35, 0.3, 0.2, 0.25, 0.3] * 4, seed=1)
    high = bootstrap_mean([0.7, 0.8, 0.75, 0.7, 0.85, 0.8, 0.75, 0.7] * 4, seed=1)
    same = bootstrap_mean([0.3, 0.25, 0.2, 0.3, 0.35, 0.25, 0.3, 0.2] * 4, seed=2)

    assert low.low is not None and low.high is not None and low.mean is not None
    assert low.low <= low.mean <= low.high
    assert high.above(low) and not low.above(high)
    assert not same.above(low) and not low.above(same)
    assert bootstrap_mean([], seed=0) == Interval(None, None, None, 0)


def test_the_report_has_every_metric_per_variant_with_intervals(
    teacher: Any, base_class: Any
) -> None:
    experiment = make_experiment()
    for n in range(8):
        finished_job(teacher, base_class, topic=f"Volcanoes {n}")

    result = report.experiment_report(experiment)

    assert sum(r.courses for r in result.variants) == 8
    for variant in result.variants:
        if not variant.courses:
            continue
        for name in ("judge_overall", "judge_objectives_taught", "heuristic_overall",
                     "cost_per_course", "cost_per_task", "latency_ms", "failure_rate",
                     "repair_rate"):  # fmt: skip
            interval = variant.metrics[name]
            assert interval.n == variant.courses and interval.mean is not None, name
            assert interval.low is not None and interval.low <= interval.mean
        assert variant.metrics["human_rating"].n == 0  # nobody rated these
        assert variant.quality_per_dollar is not None and variant.quality_per_dollar > 0
    body = result.as_dict()
    assert body["primary_metric"] == "judge_objectives_taught"
    assert sorted(body["ranking_by_quality_per_dollar"]) == ["candidate", "control"]


# --- API and admin --------------------------------------------------------------------------------
def test_the_api_is_read_only_and_for_staff(
    teacher: Any, base_class: Any, staff: Any, client_for: Any
) -> None:
    experiment = make_experiment()
    finished_job(teacher, base_class, topic="Tides")

    listing = client_for(staff).get("/api/experiments/")
    detail = client_for(staff).get(f"/api/experiments/{experiment.pk}/")

    assert listing.status_code == 200 and listing.json()["results"][0]["name"] == experiment.name
    body = detail.json()
    assert [v["name"] for v in body["variants"]] == ["control", "candidate"]
    assert body["report"]["primary_metric"] == "judge_objectives_taught"
    assert {v["name"] for v in body["report"]["variants"]} == {"control", "candidate"}
    assert client_for(teacher).get("/api/experiments/").status_code == 403
    assert client_for(teacher).get(f"/api/experiments/{experiment.pk}/").status_code == 403
    assert client_for(staff).get("/api/experiments/999999/").status_code == 404
    assert client_for(staff).post("/api/experiments/", {}).status_code == 405


def test_the_api_refuses_organisation_administrators_even_with_the_permission(
    teacher: Any, organisation: Any, client_for: Any
) -> None:
    # Experiments span every organisation; the admin refuses them these pages too.
    experiment = make_experiment()
    org_admin = organisation_admin_make(user=teacher, organisation=organisation)
    org_admin.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    org_admin = get_user_model().objects.get(pk=org_admin.pk)  # permissions cached per instance
    assert org_admin.has_perm("generation.view_experiment")

    assert client_for(org_admin).get("/api/experiments/").status_code == 403
    assert client_for(org_admin).get(f"/api/experiments/{experiment.pk}/").status_code == 403


def test_the_admin_report_stops_and_promotes_recording_who_and_when(
    teacher: Any, base_class: Any, staff: Any
) -> None:
    experiment = make_experiment()
    for n in range(4):
        finished_job(teacher, base_class, topic=f"Rivers {n}")
    client = Client()
    client.force_login(staff)
    url = f"/admin/generation/experiment/{experiment.pk}/report/"

    page = client.get(url).content.decode()
    assert '<svg id="chart-primary" class="cg-chart"' in page
    assert page.count('<tr class="variant-row') == 2 and "Stop the experiment" in page
    candidate = ExperimentVariant.objects.get(experiment=experiment, name="candidate")
    promote = f"/admin/generation/experiment/{experiment.pk}/promote/{candidate.pk}/"
    assert client.get(promote).status_code == 403  # POST only

    response = client.post(promote)

    assert response.status_code == 302
    promotion = Promotion.objects.get(variant=candidate)
    assert promotion.promoted_by == staff
    page = client.get(url).content.decode()
    assert "promoted by ops" in page and "Stop the experiment" not in page


def test_the_report_page_in_headless_chromium(
    teacher: Any, base_class: Any, staff: Any, live_server: Any
) -> None:
    chromium = chromium_or_skip()
    experiment = make_experiment()
    for n in range(6):
        finished_job(teacher, base_class, topic=f"Coral reefs {n}")
    client = Client()
    client.force_login(staff)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    shot = screenshot_path("experiment_report.png")
    spec = {
        "chromium": chromium,
        "pages": [
            {
                "url": f"{live_server.url}/admin/generation/experiment/{experiment.pk}/report/",
                "cookies": [
                    {
                        "name": settings.SESSION_COOKIE_NAME,
                        "value": cookie,
                        "domain": "localhost",
                        "path": "/",
                    }
                ],
                "shots": [{"path": str(shot), "width": 1400, "height": 1000, "fullPage": True}],
            }
        ],
    }

    page = run_node("probe_pages.mjs", spec)["pages"][0]

    assert page["status"] == 200, page
    assert page["consoleErrors"] == [] and page["pageErrors"] == [] and page["external"] == []
    assert f"Experiment {experiment.name}" in page["text"]
    assert "Ranking by quality per dollar" in page["text"] and "candidate" in page["text"]
    assert shot.stat().st_size > 10_000
    print(f"experiment report screenshot: {shot}")
