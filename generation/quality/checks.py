"""System checks for the judge's configuration (settings.py cannot import the rubric)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from generation.rubric import Criterion


@checks.register()
def check_judge_thresholds(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    unknown = sorted(set(settings.COURSEGEN_JUDGE_MIN_SCORES) - {c.value for c in Criterion})
    if not unknown:
        return []
    return [
        checks.Error(
            f"COURSEGEN_JUDGE_MIN_SCORES names unknown criteria: {', '.join(unknown)}",
            hint=f"The judge's criteria are {', '.join(c.value for c in Criterion)}.",
            id="generation.E001",
        )
    ]
