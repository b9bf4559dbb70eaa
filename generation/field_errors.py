"""One problem found in a model's output, at a path that names the part to fix.

Schema validation (generation/validation.py) and the content checks (generation/checks.py) both
report `FieldError`s, so every failure feeds the same re-ask, and one confined to a part
(`questions.2.options.3`) can be regenerated alone (generation/parts.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path or '(root)'}: {self.message}"
