"""Generate one course from the command line, with a progress bar and a summary.

With `--json` the last line of stdout is one JSON object with the run's figures (job_run_summary
in generation/selectors.py, plus the constraint step per model and the wall time), whatever the
outcome: scripts and checks read it instead of the text. Exits non-zero when the course fails.
With no broker configured the tasks run in-process (eager); with one, they run on the Celery
workers and this command follows the job's rows.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils import timezone
from pydantic import ValidationError
from tqdm import tqdm

from accounts.models import BaseClass
from generation import messages, safety, selectors, services
from generation.batch_models import BATCH_REQUEST_OPEN
from generation.batch_selectors import job_batch_saving
from generation.evaluation import CRITERIA, EVALUATOR
from generation.models import (
    BatchRequest,
    CourseGenerationJob,
    GenerationAttempt,
    GenerationTask,
    JobStatus,
)
from generation.providers import get_provider
from generation.providers.openai import OpenAIProvider
from generation.rubric import JUDGE_EVALUATOR
from generation.schemas import CourseRequest, Level


class Command(BaseCommand):
    help = "Generate a course end to end and print its summary."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--user", required=True, help="username of a member of the class's organisation"
        )
        parser.add_argument("--topic", required=True)
        parser.add_argument(
            "--class", dest="base_class", help="class id or name (default: the user's first)"
        )
        parser.add_argument("--audience", default="general learners")
        parser.add_argument("--level", default="beginner", choices=[lv.value for lv in Level])
        parser.add_argument("--modules", type=int, default=4)
        parser.add_argument("--lessons", type=int, default=3)
        parser.add_argument("--questions", type=int, default=4)
        parser.add_argument("--language", default="en")
        parser.add_argument("--instructions", default="")
        parser.add_argument(
            "--timeout", type=float, default=1800, help="seconds to wait for the job"
        )
        parser.add_argument(
            "--urgency", default="now", choices=["now", "batch"], help="batch: docs/batch.md"
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print the run's figures as one JSON object on the last line",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r} (run `manage.py seed_demo` first?)")
        base_class = self._base_class(user, options["base_class"])
        request = self._request(options)
        started = time.monotonic()
        try:
            job = self._submit_and_follow(
                user, base_class, request, options["timeout"], options["urgency"]
            )
        except TimedOut as exc:
            if options["json"] and exc.job is not None:
                self._json(exc.job, time.monotonic() - started, timed_out=True)
            raise CommandError(str(exc)) from None
        wall_s = time.monotonic() - started
        self._summary(job, wall_s)
        if options["json"]:
            self._json(job, wall_s)
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"job {job.id} {job.status}: {job.error}")

    def _json(self, job: CourseGenerationJob, wall_s: float, *, timed_out: bool = False) -> None:
        job.refresh_from_db()
        summary = selectors.job_run_summary(job)
        models = GenerationTask.objects.filter(job=job).exclude(model="")
        summary["constraint"] = _constraints(sorted(set(models.values_list("model", flat=True))))
        summary["provider"] = settings.COURSEGEN_PROVIDER
        summary["wall_s"] = round(wall_s, 1)
        summary["timed_out"] = timed_out
        if job.urgency == "batch":
            summary["batch_saving_usd"] = float(job_batch_saving(job_id=job.pk))
        self.stdout.write(json.dumps(summary, sort_keys=True))

    def _base_class(self, user: Any, wanted: str | None) -> BaseClass:
        classes = BaseClass.objects.filter(organisation__memberships__user=user)
        if wanted:
            classes = classes.filter(pk=wanted) if _is_uuid(wanted) else classes.filter(name=wanted)
        base_class = classes.order_by("name").first()
        if base_class is None:
            raise CommandError("no such class in the user's organisations")
        return base_class

    def _request(self, options: dict[str, Any]) -> CourseRequest:
        try:
            return CourseRequest(
                topic=options["topic"],
                audience=options["audience"],
                level=Level(options["level"]),
                num_modules=options["modules"],
                lessons_per_module=options["lessons"],
                questions_per_lesson=options["questions"],
                language=options["language"],
                instructions=options["instructions"],
            )
        except ValidationError as exc:
            raise CommandError(f"invalid course request:\n{exc}") from exc

    def _submit_and_follow(
        self,
        user: Any,
        base_class: BaseClass,
        request: CourseRequest,
        timeout: float,
        urgency: str = "now",
    ) -> CourseGenerationJob:
        submitted: dict[str, Any] = {}
        try:  # the same moderation as the API's submit (docs/safety.md)
            verdict = safety.request_moderate(
                user=user,
                texts={f: getattr(request, f) for f in ("topic", "audience", "instructions")},
                organisation_id=base_class.organisation_id,
            )
        except safety.ContentFlagged as exc:
            raise CommandError(str(exc)) from exc

        def submit() -> None:
            try:
                submitted["job"] = services.job_submit(
                    user=user,
                    base_class=base_class,
                    request=request,
                    moderation=verdict,
                    urgency=urgency,
                )
            except Exception as exc:  # reported by the main thread
                submitted["error"] = exc
            finally:
                connections.close_all()  # this thread's own connections

        # Eager mode runs the whole course inside job_submit: do it on a thread so the bar moves.
        since = timezone.now()
        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        job = None
        with tqdm(total=100, unit="%", desc=request.topic[:40], disable=None) as bar:
            while time.monotonic() < deadline:
                job = self._latest_job(submitted, user, since) or job
                waiting = job is not None and _waits_for_batch(job)
                if job is not None:
                    bar.update(job.progress - bar.n)
                    if job.is_terminal and not thread.is_alive() and not waiting:
                        return job
                if "error" in submitted:
                    raise CommandError(f"submit failed: {submitted['error']}")
                batch_job = urgency == "batch" and "job" in submitted
                if messages.always_eager() and (waiting or batch_job):
                    services.batch_poll()  # no beat in-process: poll the batches here
                time.sleep(0.2)
        raise TimedOut(f"timed out after {timeout:.0f}s", job)

    def _latest_job(
        self, submitted: dict[str, Any], user: Any, since: datetime
    ) -> CourseGenerationJob | None:
        if "job" in submitted:
            return CourseGenerationJob.objects.get(pk=submitted["job"].pk)
        # In eager mode job_submit returns only when the course is done; find its row meanwhile.
        return CourseGenerationJob.objects.filter(owner=user, created_at__gte=since).first()

    def _summary(self, job: CourseGenerationJob, wall_s: float) -> None:
        course = job.course or {}
        tasks = GenerationTask.objects.filter(job=job).count()
        calls = GenerationAttempt.objects.filter(task__job=job).count()
        provider = settings.COURSEGEN_PROVIDER
        label = "offline simulator (no real LLM was called)" if provider == "offline" else provider
        out = self.stdout.write
        out("")
        out(f"Course:    {course.get('title') or job.topic}")
        out(f"Status:    {job.status} in {wall_s:.1f}s   provider: {label}")
        for module in course.get("modules", []):
            out(f"  Module {module['position']}: {module['title']}")
            for lesson in module["lessons"]:
                out(f"    {lesson['key']}: {lesson['title']}")
        out(f"Tasks:     {tasks}   LLM calls: {calls}")
        out(
            f"Tokens:    {job.input_tokens} in ({job.cached_tokens} cached), "
            f"{job.output_tokens} out"
        )
        out(f"Cost:      ${job.cost_usd:.4f} at list prices, cached prompt tokens included")
        if job.urgency == "batch":
            saving = job_batch_saving(job_id=job.pk)
            out(f"Batch:     ${saving:.4f} saved by the Batch API's half price (docs/batch.md)")
        out(
            f"Re-asks:   ${job.reask_cost_usd:.4f} ({job.reask_share:.1%} of the cost) on re-asks, "
            f"part repairs and failed attempts; {calls / max(tasks, 1):.2f} calls per task"
        )
        evaluation = job.evaluations.filter(evaluator=EVALUATOR).first()  # the newest
        if evaluation is not None:
            scores = ", ".join(
                f"{name} {evaluation.criteria[name]:.2f}"
                for name in CRITERIA
                if name in evaluation.criteria
            )
            out(f"Quality:   {evaluation.overall:.2f} ({evaluation.evaluator}): {scores}")
            for line in evaluation.feedback:
                out(f"  to improve: {line}")
        self._judge_summary(job)
        out(f"Job id:    {job.id}")
        out(
            f"Admin:     run `make web`, then open "
            f"http://127.0.0.1:8000/admin/generation/coursegenerationjob/{job.id}/change/"
        )

    def _judge_summary(self, job: CourseGenerationJob) -> None:
        """The LLM judge's course score (it runs after finalize: in-process, it has run)."""
        job.refresh_from_db(fields=["judge_status", "judge_score", "judge_cost_usd"])
        judged = job.evaluations.filter(evaluator=JUDGE_EVALUATOR, task__isnull=True).first()
        if judged is None:
            self.stdout.write(f"Judge:     {job.judge_status} (no course verdict)")
            return
        simulated = ", simulated by the offline provider" if judged.details.get("simulated") else ""
        scores = ", ".join(f"{name} {value:.2f}" for name, value in judged.criteria.items())
        self.stdout.write(
            f"Judge:     {judged.overall:.2f} ({judged.evaluator}{simulated}): {scores}; "
            f"${job.judge_cost_usd:.4f}, apart from the generation cost"
        )


def _waits_for_batch(job: CourseGenerationJob) -> bool:
    """In-process only: the job's tasks, judge runs or regenerations wait for a batch
    (COURSEGEN_BATCH_JUDGE, COURSEGEN_BATCH_REGENERATIONS), which this command polls."""
    return messages.always_eager() and (
        BatchRequest.objects.filter(task__job=job, status__in=BATCH_REQUEST_OPEN).exists()
    )


class TimedOut(Exception):
    def __init__(self, message: str, job: CourseGenerationJob | None):
        super().__init__(message)
        self.job = job


def _constraints(models: list[str]) -> dict[str, str]:
    """The constraint step the provider uses for each model (the openai provider's ladder);
    "none" for the offline simulator, "undecided" before a model's first answer."""
    provider = get_provider()
    if not isinstance(provider, OpenAIProvider):
        return dict.fromkeys(models, "none")
    return {
        m: (step.value if (step := provider.constraint_step(m)) else "undecided") for m in models
    }


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
