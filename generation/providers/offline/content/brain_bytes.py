"""Content of a brain-bytes task: a short spoken script and its length in seconds."""

from __future__ import annotations

import random

from generation.providers.offline.content.facts import Data, Facts
from generation.providers.offline.content.text import fit

_SCRIPT_PARTS = (
    (
        "Welcome to this Brain Byte on {focus}. In the next couple of minutes we will take one "
        "idea from {t} and make it stick. No notes needed; just listen, and pause whenever you "
        "want to think something through.",
        "Here is a quick question to start: could you explain {focus} to a friend in under a "
        "minute? If not, that is fine. This short audio is designed to get you there, one step at "
        "a time, using plain language and one simple example from {t}.",
    ),
    (
        "First, the big picture, in one line: {summary} Everything else in this lesson hangs off "
        "that idea, so it is worth saying it to yourself once more in your own words before we go "
        "on. If you can do that, you already have the hardest part.",
        "Let's start with the core of {focus}, in one line: {summary} Notice that this is a way of "
        "thinking, not a formula. Once you see it that way, a lot of the detail in {t} starts to "
        "fall into place on its own.",
    ),
    (
        "Second, how you use it. Start small: pick one simple case, say what you expect to "
        "happen, and then check. When the result surprises you, change just one thing and check "
        "again. That loop of predicting, checking and adjusting is how people who are good at {t} "
        "actually work.",
        "Now for how it works in practice. Experienced people in {t} rarely jump straight to the "
        "complicated version. They try the simplest approach first, compare it with what they "
        "expected, and only then add detail. Doing the same will save you a lot of time and "
        "frustration.",
    ),
    (
        "Picture a small example. Someone new to {t} tries the idea on a single, simple case. "
        "They write down what they expect, run through it, and compare. The result is slightly "
        "off, so they change one detail and try again. Three rounds later they understand why it "
        "works, not just that it works.",
        "Let's make it concrete. Imagine you are helping a friend with a first {t} task. Instead "
        "of handing them the answer, you ask them to predict the outcome, try it, and explain any "
        "difference. That small routine teaches more about {focus} than any amount of rereading.",
    ),
    (
        "Third, a trap to avoid. It is tempting to trust the first result you get, or to change "
        "several things at once when something goes wrong. Both habits hide what is really going "
        "on. Slow down, change one thing at a time, and keep a short note of what you tried.",
        "One common mistake is to learn {focus} as a list of steps to memorize. Steps are useful, "
        "but they break the moment a problem looks a little different. Aim instead to understand "
        "why each step is there; then you can adapt when the situation changes.",
    ),
    (
        "So, to wrap up: working with {focus} comes down to clear goals, small experiments and "
        "honest checking. Your goal from this lesson is to {obj0}. Try it once today on a small "
        "example, and you will remember it far better than if you only listen.",
        "That's it for this Brain Byte. Remember the three ideas: the core of {focus}, how to use "
        "it with small, checked steps, and the trap of changing too much at once. Next time you "
        "work on {t}, try to {obj0}, and notice how much easier it gets.",
    ),
)
_SPOKEN_WORDS_PER_MINUTE = 150


def build_brain_bytes(facts: Facts, rng: random.Random) -> Data:
    words = facts.words()
    script = " ".join(rng.choice(part).format(**words) for part in _SCRIPT_PARTS)
    script = fit(script, 3000)
    seconds = round(len(script.split()) * 60 / _SPOKEN_WORDS_PER_MINUTE)
    return {
        "title": f"Brain Byte: {facts.lesson_title}",
        "script": script,
        "estimated_seconds": min(max(seconds, 20), 240),
    }
