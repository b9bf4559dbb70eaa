"""Prompt rules the simulator follows: a few phrases it recognises in the task's prompt and
answers the way an instruction-following model would (an A/B experiment's candidate prompt can
then change what the simulator writes, and the judge can see the difference).

Only the task-specific message (the last one) is read. A rule is recognised by a phrase that the
prompt must contain word for word; tests/test_judge.py checks the candidate prompts do.
"""

from __future__ import annotations

from collections.abc import Sequence

from generation.providers.base import Message

EXPLAIN_EACH_OBJECTIVE = "explain_each_objective"
PRACTISE_EACH_OBJECTIVE = "practise_each_objective"
RULE_PHRASES: dict[str, str] = {
    EXPLAIN_EACH_OBJECTIVE: "teach every objective in a paragraph of its own",
    PRACTISE_EACH_OBJECTIVE: "give one worked example per learning objective",
}


def followed_rules(messages: Sequence[Message]) -> list[str]:
    """The rules whose phrase the prompt's last message contains."""
    text = messages[-1].content.lower() if messages else ""
    return sorted(rule for rule, phrase in RULE_PHRASES.items() if phrase in text)
