"""The load generator: simulated users who submit a course through the real HTTP API, follow its
progress until it ends, fetch the course, and submit the next one. Each user is a thread with its
own keep-alive connection. A user follows its job as a client would: by server-sent events
(GET /api/jobs/<id>/events/, one stream read until the terminal event, reconnecting when the
server ends it early) or, for clients that cannot stream, by polling /progress/ every `poll_s`.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field

TOPICS = [
    "Photosynthesis and plant energy",
    "The water cycle",
    "Fractions and decimals",
    "Introduction to Python programming",
    "The French Revolution",
    "Plate tectonics",
    "Basic statistics",
    "Human digestive system",
    "Renewable energy sources",
    "Shakespeare's Macbeth",
    "Probability for beginners",
    "The solar system",
]
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Course:
    job_id: str
    submitted_at: float  # time.monotonic() when the submit request went out
    submit_ms: float
    finished_at: float | None = None
    status: str = ""


@dataclass
class LoadResult:
    courses: list[Course] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    polls: list[tuple[float, float]] = field(default_factory=list)  # (monotonic at, ms)
    # Server-sent events: (monotonic at, ms from the request to its first event) per stream
    # opened, and the monotonic time of every progress event received.
    streams: list[tuple[float, float]] = field(default_factory=list)
    events: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, course: Course) -> None:
        with self.lock:
            self.courses.append(course)

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)

    def finished(self) -> list[Course]:
        return [c for c in self.courses if c.finished_at is not None]


class User(threading.Thread):
    def __init__(
        self,
        *,
        port: int,
        token: str,
        base_class: str,
        result: LoadResult,
        stop: threading.Event,
        budget: Budget,
        poll_s: float,
        ramp_s: float = 0.0,
        modules: int = 4,
        lessons: int = 3,
        events: bool = False,
    ):
        super().__init__(daemon=True)
        self.port, self.token, self.base_class = port, token, base_class
        self.result, self.stop, self.budget, self.poll_s = result, stop, budget, poll_s
        self.modules, self.lessons, self.ramp_s = modules, lessons, ramp_s or poll_s
        self.events = events
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> tuple[int, dict]:
        headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        payload = json.dumps(body) if body is not None else None
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else {}
            except (http.client.HTTPException, OSError):
                self.conn.close()  # the server closed a keep-alive connection: reconnect once
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def run(self) -> None:
        # Users start spread over `ramp_s`, as real users would not click in step.
        time.sleep(random.random() * self.ramp_s)
        while not self.stop.is_set() and self.budget.take():
            try:
                self.one_course()
            except Exception as exc:
                self.result.error(f"{type(exc).__name__}: {exc}")
                time.sleep(1)

    def one_course(self) -> None:
        body = {
            "base_class": self.base_class,
            "topic": random.choice(TOPICS),
            "num_modules": self.modules,
            "lessons_per_module": self.lessons,
        }
        started = time.monotonic()
        status, data = self.request("POST", "/api/jobs/", body)
        submit_ms = (time.monotonic() - started) * 1000
        if status != 201:
            self.result.error(f"submit {status}: {str(data)[:200]}")
            time.sleep(1)
            return
        course = Course(str(data["id"]), started, submit_ms)
        self.result.add(course)
        if self.events:
            self.follow_events(course)
            return
        while not self.stop.is_set():
            time.sleep(self.poll_s)
            # The cheap poll a waiting client uses; the course is fetched once when it is done.
            polled = time.monotonic()
            status, data = self.request("GET", f"/api/jobs/{course.job_id}/progress/")
            self.result.polls.append((polled, (time.monotonic() - polled) * 1000))  # atomic
            if status == 200 and data.get("status") in TERMINAL:
                course.finished_at, course.status = time.monotonic(), str(data["status"])
                if data.get("course_url"):
                    self.request("GET", str(data["course_url"]))
                return

    def follow_events(self, course: Course) -> None:
        """Read the job's event stream until its terminal event; reconnect if the server ends
        the stream first (its COURSEGEN_EVENTS_MAX_S), as an EventSource would."""
        headers = {"Authorization": f"Token {self.token}", "Accept": "text/event-stream"}
        path = f"/api/jobs/{course.job_id}/events/"
        while not self.stop.is_set():
            opened = time.monotonic()
            try:
                self.conn.request("GET", path, headers=headers)
                response = self.conn.getresponse()
            except (http.client.HTTPException, OSError):
                self.conn.close()  # a keep-alive connection the server closed: reconnect
                continue
            if response.status != 200:
                self.result.error(f"events {response.status}: {response.read()[:200]!r}")
                time.sleep(self.poll_s)
                continue
            data = self.read_stream(response, opened)
            if data is not None and data.get("status") in TERMINAL:
                course.finished_at, course.status = time.monotonic(), str(data["status"])
                if data.get("course_url"):
                    self.request("GET", str(data["course_url"]))
                return

    def read_stream(self, response: http.client.HTTPResponse, opened: float) -> dict | None:
        """The last progress event of one stream, read to its end."""
        last: dict | None = None
        lines: list[bytes] = []
        for raw in iter(response.readline, b""):
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                lines.append(line[5:].strip())
            elif not line and lines:  # a blank line ends an event
                now = time.monotonic()
                if last is None:
                    self.result.streams.append((opened, (now - opened) * 1000))
                self.result.events.append(now)
                last, lines = json.loads(b"\n".join(lines)), []
            if self.stop.is_set():
                self.conn.close()
                return None
        return last


class Budget:
    """How many more courses the users may submit in all (None: no limit)."""

    def __init__(self, total: int | None):
        self.left = total
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def run_users(
    *,
    port: int,
    tokens: list[str],
    base_class: str,
    poll_s: float,
    stop: threading.Event,
    budget: Budget,
    ramp_s: float = 0.0,
    event_share: float = 0.0,
) -> tuple[LoadResult, list[User]]:
    """`event_share` of the users follow their jobs by server-sent events, the rest poll."""
    result = LoadResult()
    streaming = streaming_users(len(tokens), event_share)
    users = [
        User(
            port=port,
            token=token,
            base_class=base_class,
            result=result,
            stop=stop,
            budget=budget,
            poll_s=poll_s,
            ramp_s=ramp_s,
            events=index < streaming,
        )
        for index, token in enumerate(tokens)
    ]
    for user in users:
        user.start()
    return result, users


def streaming_users(users: int, event_share: float) -> int:
    """How many of `users` follow their jobs by server-sent events (the first ones started)."""
    return round(users * event_share)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
