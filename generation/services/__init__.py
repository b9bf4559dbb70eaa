"""Writes for course generation. Views, commands and Celery tasks call these and nothing else.

The life of a job: `job_submit` creates the job, its outline task and its queue entry;
`queue_dispatch` starts queued jobs in priority order under the global cap; `job_run_outline`
writes the outline and plans one task row per unit; a Celery chord runs `task_run` for every row
and then `job_finalize`. Each step is safe to repeat: claims are conditional updates with leases,
succeeded rows are never sent to the provider again, and terminal jobs are left alone.

One module per stage: `submit` (admission and queueing), `dispatch` (the queue and the
dispatcher), `runs` (one task: claim, provider call, record), `planning` (outline to chord),
`finalize` (closing a job), `dedupe` (near-duplicate questions across a course), `controls`
(priority, cancel), `watchdog` (failing a job nothing moves on any more), `alerts` (what
generation alerts on), `ledger` (attempt rows, usage and totals) and `common` (the error, the
worker's name, a tier's model), without import cycles
(lint-imports). Inside the package a module calls another's functions through that module
(`dispatch.send_dispatch()`), so a test replaces a function in one place: where it is defined.
Everything else imports from `generation.services`, never from its modules.
"""

from generation.services.alerts import (
    capacity_check,
    content_flagged,
    job_outcome_record,
    quality_check,
)
from generation.services.batches import BatchPollReport, batch_poll
from generation.services.batchowners import (
    ASK_FIRST,
    Line,
    judge_by_batch,
    owner_line,
    owner_line_take,
    owner_replay,
    owner_request_queue,
    regeneration_by_batch,
)
from generation.services.batchowners import waiting_for_batch as owner_waiting_for_batch
from generation.services.batchowners import waiting_statuses as owner_waiting_statuses
from generation.services.batchqueue import batch_requests_queue
from generation.services.common import (
    GenerationError,
    UrgencyNotAllowedError,
    model_for,
    worker_name,
)
from generation.services.controls import job_cancel, job_set_priority, job_set_urgency
from generation.services.dedupe import job_dedupe_questions
from generation.services.dispatch import (
    dispatch_asked_clear,
    queue_dispatch,
    queue_entry_close,
    running_job_count,
    send_dispatch,
)
from generation.services.finalize import FINALIZED_FIELDS, job_evaluate, job_finalize
from generation.services.ledger import (
    job_totals_apply,
    judge_attempts_record,
    task_attempts_record,
    task_usage_add,
    usage_increments,
    usage_totals,
)
from generation.services.planning import (
    job_after_outline,
    job_dispatch_chord,
    job_plan_tasks,
    job_run_outline,
    plan_units,
)
from generation.services.runs import (
    LeaseClock,
    TaskRunResult,
    defer_delay,
    job_refresh_progress,
    new_version_moderation,
    task_claim,
    task_held_alert,
    task_lease_renew,
    task_run,
    task_spec_build,
    while_lease_holds,
)
from generation.services.submit import ROLE_PRIORITY, job_submit, urgency_check
from generation.services.watchdog import job_fail_stuck

__all__ = [
    "ASK_FIRST",
    "FINALIZED_FIELDS",
    "ROLE_PRIORITY",
    "BatchPollReport",
    "GenerationError",
    "LeaseClock",
    "Line",
    "TaskRunResult",
    "UrgencyNotAllowedError",
    "batch_poll",
    "batch_requests_queue",
    "capacity_check",
    "content_flagged",
    "defer_delay",
    "dispatch_asked_clear",
    "job_after_outline",
    "job_cancel",
    "job_dedupe_questions",
    "job_dispatch_chord",
    "job_evaluate",
    "job_fail_stuck",
    "job_finalize",
    "job_outcome_record",
    "job_plan_tasks",
    "job_refresh_progress",
    "job_run_outline",
    "job_set_priority",
    "job_set_urgency",
    "job_submit",
    "job_totals_apply",
    "judge_attempts_record",
    "judge_by_batch",
    "model_for",
    "new_version_moderation",
    "owner_line",
    "owner_line_take",
    "owner_replay",
    "owner_request_queue",
    "owner_waiting_for_batch",
    "owner_waiting_statuses",
    "plan_units",
    "quality_check",
    "queue_dispatch",
    "queue_entry_close",
    "regeneration_by_batch",
    "running_job_count",
    "send_dispatch",
    "task_attempts_record",
    "task_claim",
    "task_held_alert",
    "task_lease_renew",
    "task_run",
    "task_spec_build",
    "task_usage_add",
    "urgency_check",
    "usage_increments",
    "usage_totals",
    "while_lease_holds",
    "worker_name",
]
