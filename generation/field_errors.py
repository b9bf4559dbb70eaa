"""One problem found in a model's output, at a path that names the part to fix.

Schema validation (generation/validation.py) and the content checks (generation/checks.py) both
report `FieldError`s, so every failure feeds the same re-ask, and one confined to a part
(`questions.2.options.3`) can be regenerated alone (generation/parts.py). And what a failed
task's `error` may say about an exception (`public_error`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger("coursegen.generation")


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str
    # The content check that found it (generation/checks.py: "reading_level" ...); "" for the
    # schema. A task that fails names it, so a teacher knows which rule the output could not meet.
    check: str = ""

    def as_dict(self) -> dict[str, str]:
        found = {"path": self.path, "message": self.message}
        return {**found, "check": self.check} if self.check else found

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.message}"


def describe(errors: Sequence[FieldError] | Sequence[dict[str, str]], *, limit: int = 3) -> str:
    """The errors a task ended with, for its error: each check's name, the path and the message
    (which carries the value: "reading level is grade 16.2 ...; needs grade 4-12")."""
    items = [e if isinstance(e, dict) else e.as_dict() for e in errors]
    shown = [
        f"{e.get('check') or 'schema'} check failed at {e.get('path') or '(root)'}: {e['message']}"
        for e in items[:limit]
    ]
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(shown) + more


def public_error(prefix: str, exc: BaseException) -> str:
    """A task's `error` (API callers see it): the class and HTTP status, never the text (SQL,
    hosts, account details), which goes to the server log."""
    logger.warning("%s: %s: %s", prefix, type(exc).__name__, exc)
    status = getattr(exc, "status_code", None)
    return f"{prefix}: {type(exc).__name__}{f' (status {status})' if status else ''}; see the logs"
