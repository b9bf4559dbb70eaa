"""`manage.py judge_calibrate [--provider offline|openai]`: how often the judge ranks each good
lesson of the calibration set above its flawed versions, per flaw, and a JSON last line.

With the offline provider the judge is a simulator (`simulated: true`): its agreement shows
which flaws its computed checks can see, and is evidence of nothing about a language model.
With a real model (`--provider openai`, OPENAI_BASE_URL for a local server) it is the real
measurement, at the price of one judge call per version (the cost is printed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation.providers import get_provider
from generation.quality import calibration
from generation.quality.judge import judge_model

DEFAULT_SET = Path(settings.BASE_DIR) / "tests" / "calibration" / "judge_set.json"


class Command(BaseCommand):
    help = "Measure how often the quality judge ranks a good lesson above its flawed version."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--provider",
            choices=["offline", "openai"],
            default=None,
            help="Provider to judge with (default: COURSEGEN_PROVIDER).",
        )
        parser.add_argument("--model", default=None, help="Judge model (default: the judge's).")
        parser.add_argument("--set", default=str(DEFAULT_SET), help="Calibration set (JSON).")
        parser.add_argument("--flaw", action="append", default=[], choices=list(calibration.FLAWS))
        parser.add_argument("--limit", type=int, default=None, help="Judge at most N pairs.")
        parser.add_argument("--quiet", action="store_true", help="Only the table and the JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        try:
            items = calibration.load_set(Path(options["set"]))
        except calibration.CalibrationSetError as exc:
            raise CommandError(str(exc)) from exc
        provider = get_provider(options["provider"] or settings.COURSEGEN_PROVIDER)
        model = options["model"] or judge_model()
        if provider.name == "offline":
            self.stdout.write("Offline provider: the judge is a SIMULATOR (computed checks).")
        started = time.monotonic()
        report = calibration.calibrate(
            items,
            provider=provider,
            model=model,
            flaws=options["flaw"],
            limit=options["limit"],
            progress=None if options["quiet"] else self._progress,
        )
        summary = {
            **report.summary(),
            "provider": provider.name,
            "model": model,
            "wall_s": round(time.monotonic() - started, 1),
        }
        self._table(summary)
        self.stdout.write(json.dumps(summary))

    def _progress(self, pair: calibration.PairResult) -> None:
        verdict = "agree" if pair.agrees else ("tie" if pair.tie else "DISAGREE")
        self.stdout.write(
            f"  {pair.item:<40} {pair.flaw:<22} good {pair.good:.2f} flawed {pair.flawed:.2f} "
            f"{verdict}"
        )

    def _table(self, summary: dict[str, Any]) -> None:
        header = f"{'flaw':<22} {'pairs':>5} {'agree':>7} {'on criterion':>13} {'ties':>5}"
        self.stdout.write(header)
        for flaw, pairs in summary["pairs_by_flaw"].items():
            self.stdout.write(
                f"{flaw:<22} {pairs:>5} {_pct(summary['agreement_by_flaw'][flaw]):>7} "
                f"{_pct(summary['criterion_agreement_by_flaw'][flaw]):>13} "
                f"{summary['ties_by_flaw'][flaw]:>5}"
            )
        self.stdout.write(
            f"{'all':<22} {summary['pairs']:>5} {_pct(summary['agreement']):>7} "
            f"{'':>13} {summary['ties']:>5}   ({summary['judge_calls']} judge calls, "
            f"${summary['cost_usd']}, {summary['errors']} without a verdict)"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"
