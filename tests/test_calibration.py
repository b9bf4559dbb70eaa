"""The judge's calibration set (tests/calibration/judge_set.json) and `manage.py judge_calibrate`,
offline (the simulated judge) and against the loopback OpenAI-compatible server."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from generation.providers.openai import strict_schema
from generation.quality import calibration
from generation.rubric import Criterion, LessonVerdict
from tests.openai_server import Mode, running_openai_server
from tests.test_openai_provider import strict_problems

SET = Path(__file__).parent / "calibration" / "judge_set.json"


def run(*args: str) -> tuple[list[str], dict[str, Any]]:
    out = io.StringIO()
    call_command("judge_calibrate", *args, stdout=out)
    lines = out.getvalue().splitlines()
    return lines, json.loads(lines[-1])


# --- The set ------------------------------------------------------------------------------------
def test_the_set_has_30_lessons_each_with_named_flaws_of_every_kind() -> None:
    items = calibration.load_set(SET)  # every version validates as a lesson section and questions

    flaws = Counter(f.flaw for item in items for f in item.flawed)
    assert len(items) >= 30
    assert set(flaws) == set(calibration.FLAWS)
    assert min(flaws.values()) >= 10
    for item in items:
        assert item.good.questions and item.good.objectives
        for flawed in item.flawed:
            assert flawed.lesson != item.good, (item.id, flawed.flaw)
    levels = Counter(item.good.request.level.value for item in items)
    assert set(levels) == {"beginner", "intermediate", "advanced"}


def test_a_bad_edit_is_reported_with_its_item(tmp_path: Path) -> None:
    data = json.loads(SET.read_text())
    data["items"][0]["flaws"][0]["edits"][0]["find"] = "text that is not in the lesson"
    broken = tmp_path / "set.json"
    broken.write_text(json.dumps(data))

    with pytest.raises(calibration.CalibrationSetError, match=data["items"][0]["id"]):
        calibration.load_set(broken)


def test_the_verdict_schema_is_accepted_by_strict_structured_outputs() -> None:
    assert strict_problems(strict_schema(LessonVerdict)) == []


# --- The command --------------------------------------------------------------------------------
def test_it_calibrates_the_offline_simulator_and_says_it_is_simulated() -> None:
    lines, summary = run("--provider", "offline", "--quiet")

    assert "SIMULATOR" in lines[0]
    assert summary["simulated"] is True and summary["provider"] == "offline"
    assert summary["items"] == 30 and summary["pairs"] == 60
    assert summary["judge_calls"] == 90  # each good version once, each flawed version once
    assert set(summary["agreement_by_flaw"]) == set(calibration.FLAWS)
    assert 0 <= summary["agreement"] <= 1
    # The simulator computes checks from the text: it sees some flaws and not others.
    assert summary["agreement_by_flaw"]["off_level_vocabulary"] >= 0.5
    assert summary["agreement_by_flaw"]["duplicate_question"] >= 0.5
    assert summary["ties"] < summary["pairs"]
    table = [line for line in lines if line.startswith("wrong_answer_key")]
    assert re.match(r"wrong_answer_key\s+10\s+\d+%", table[0])


def test_it_can_take_one_flaw_and_a_limit() -> None:
    _, summary = run("--provider", "offline", "--flaw", "duplicate_question", "--limit", "4")

    assert summary["pairs"] == 4 and list(summary["agreement_by_flaw"]) == ["duplicate_question"]


def _length_judge(body: dict[str, Any]) -> dict[str, Any]:
    """A stand-in model for the loopback server: scores a lesson by the length of its text, so
    the agreement the command reports can be computed independently from the set."""
    score = _score_of(body["messages"][-1]["content"])
    criterion = {"justification": "length", "evidence": [], "score": score}
    return {**{c.value: criterion for c in Criterion}, "improvement": "Write more."}


def _score_of(prompt: str) -> int:
    lesson = prompt.split("<lesson>", 1)[1]
    return 1 + (len(lesson) // 100) % 5


@pytest.mark.parametrize("mode", ["json_schema", "llamacpp"])
def test_it_calibrates_a_real_provider_against_the_loopback_server(
    mode: Mode, settings: Any
) -> None:
    with running_openai_server(mode) as server:
        server.replies["LessonVerdict"] = _length_judge
        server.default_reply = _length_judge  # llama.cpp: json_object, no schema name
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_API_KEY = "test-key"

        _, summary = run("--provider", "openai", "--limit", "8", "--quiet")

    items = calibration.load_set(SET)
    expected = []
    for item in items:
        for flawed in item.flawed:
            good = _score_of(item.good.messages()[-1].content)
            expected.append(good > _score_of(flawed.lesson.messages()[-1].content))
    assert summary["simulated"] is False and summary["provider"] == "openai"
    assert summary["pairs"] == 8 and summary["errors"] == 0
    assert summary["agreement"] == round(sum(expected[:8]) / 8, 4)
    judge_calls = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert any("Objectives taught" in r.body["messages"][0]["content"] for r in judge_calls)
