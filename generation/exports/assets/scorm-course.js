/* The SCORM 1.2 runtime side of a coursegen course (one SCO: the whole course).
 *
 * Finds the LMS's API object (window.API in this window, a parent frame or the opener, as the
 * SCORM 1.2 run-time environment describes), shows one page at a time, marks the lesson quizzes,
 * and reports to the LMS:
 *   cmi.core.lesson_status   "incomplete" on the first launch, "completed" at the last page
 *   cmi.core.score.raw       0-100: the share of multiple-choice and true/false questions
 *                            answered correctly (short answers are compared with a model answer
 *                            by the learner and are not scored), with score.min 0, score.max 100
 *   cmi.core.lesson_location the page, so the LMS can resume there
 *   cmi.suspend_data         the answers given so far, restored on the next launch
 *   cmi.interactions.n.*     one record per checked question
 *   cmi.core.session_time / cmi.core.exit, then LMSFinish, when the page goes away
 * Without an LMS the course still works; nothing is recorded. Without JavaScript every page,
 * answer and explanation is shown in order.
 */
(function () {
  "use strict";

  var MAX_PARENTS = 7;
  var started = Date.now();

  function findIn(win) {
    var hops = 0;
    while (win && !win.API && win.parent && win.parent !== win && hops < MAX_PARENTS) {
      hops += 1;
      win = win.parent;
    }
    return win && win.API ? win.API : null;
  }

  function findApi() {
    var api = null;
    try { api = findIn(window); } catch (e) { api = null; } // a cross-origin parent
    if (!api && window.opener) {
      try { api = findIn(window.opener); } catch (e) { api = null; }
    }
    return api;
  }

  var lms = {
    api: findApi(),
    active: false,
    start: function () {
      if (this.api) this.active = String(this.api.LMSInitialize("")) === "true";
      return this.active;
    },
    get: function (element) {
      return this.active ? String(this.api.LMSGetValue(element) || "") : "";
    },
    set: function (element, value) {
      if (this.active) this.api.LMSSetValue(element, String(value));
    },
    commit: function () {
      if (this.active) this.api.LMSCommit("");
    },
    finish: function () {
      if (!this.active) return;
      this.active = false;
      this.api.LMSFinish("");
    }
  };

  var pages = [];
  var current = 0;
  var answers = {}; // question id -> {response, result}
  var interactions = 0;
  var completed = false;

  function questions() {
    return Array.prototype.slice.call(document.querySelectorAll(".sco-question"));
  }

  function scored() {
    return questions().filter(function (q) { return q.dataset.kind !== "text"; });
  }

  function score() {
    var auto = scored();
    var right = auto.filter(function (q) {
      return answers[q.dataset.question] && answers[q.dataset.question].result === "correct";
    }).length;
    return { right: right, total: auto.length, raw: auto.length ? Math.round((100 * right) / auto.length) : 0 };
  }

  function timespan(ms) {
    var seconds = Math.floor(ms / 1000);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(Math.floor(seconds / 3600)) + ":" + two(Math.floor(seconds / 60) % 60) + ":" + two(seconds % 60);
  }

  function saveAnswers() {
    var parts = Object.keys(answers).map(function (id) {
      return id + "=" + encodeURIComponent(answers[id].response).slice(0, 200);
    });
    lms.set("cmi.suspend_data", parts.join("&").slice(0, 4096));
  }

  function record(question, response, result) {
    var kind = question.dataset.kind;
    var n = "cmi.interactions." + interactions + ".";
    interactions += 1;
    lms.set(n + "id", question.dataset.question);
    lms.set(n + "type", kind === "text" ? "fill-in" : kind === "true_false" ? "true-false" : "choice");
    lms.set(n + "student_response", response.replace(/\s+/g, " ").slice(0, 255));
    lms.set(n + "result", result);
    if (kind !== "text") {
      var key = question.querySelector('input[value="' + question.dataset.answer + '"]');
      lms.set(n + "correct_responses.0.pattern", key.dataset.scorm);
      lms.set(n + "weighting", "1");
    }
  }

  function reveal(question, response, result) {
    var verdict = question.querySelector(".sco-verdict");
    verdict.className = "sco-verdict " + result;
    verdict.textContent = result === "correct" ? "Correct." : result === "wrong" ? "Not quite." : "Compare your answer with the model answer.";
    question.querySelector(".sco-feedback").hidden = false;
    Array.prototype.forEach.call(question.querySelectorAll("input, textarea, button"), function (el) {
      el.disabled = true;
    });
    answers[question.dataset.question] = { response: response, result: result };
  }

  function check(question) {
    var kind = question.dataset.kind;
    var response;
    var result;
    if (kind === "text") {
      response = question.querySelector("textarea").value.trim();
      result = "neutral";
    } else {
      var chosen = question.querySelector("input:checked");
      if (!chosen) {
        question.querySelector(".sco-verdict").textContent = "Choose an answer first.";
        return;
      }
      response = chosen.value;
      result = response === question.dataset.answer ? "correct" : "wrong";
    }
    reveal(question, response, result);
    var sent = kind === "text" ? response : question.querySelector('input[value="' + response + '"]').dataset.scorm;
    record(question, sent, result);
    saveAnswers();
    lms.commit();
  }

  function restore(data) {
    data.split("&").forEach(function (part) {
      var at = part.indexOf("=");
      var question = at > 0 ? document.getElementById(part.slice(0, at)) : null;
      if (!question || !question.classList.contains("sco-question")) return;
      var response = decodeURIComponent(part.slice(at + 1));
      if (question.dataset.kind === "text") {
        question.querySelector("textarea").value = response;
        reveal(question, response, "neutral");
      } else {
        var input = question.querySelector('input[value="' + response + '"]');
        if (!input) return;
        input.checked = true;
        reveal(question, response, response === question.dataset.answer ? "correct" : "wrong");
      }
    });
  }

  function finishCourse() {
    var result = score();
    document.getElementById("sco-result").textContent =
      "You answered " + result.right + " of " + result.total + " marked questions correctly (" + result.raw + "%).";
    completed = true;
    lms.set("cmi.core.score.min", "0");
    lms.set("cmi.core.score.max", "100");
    lms.set("cmi.core.score.raw", String(result.raw));
    lms.set("cmi.core.lesson_status", "completed");
    lms.commit();
  }

  function show(index) {
    current = Math.max(0, Math.min(index, pages.length - 1));
    pages.forEach(function (page, i) { page.classList.toggle("current", i === current); });
    document.getElementById("sco-prev").disabled = current === 0;
    document.getElementById("sco-next").disabled = current === pages.length - 1;
    document.getElementById("sco-progress").textContent =
      pages[current].dataset.title + " · page " + (current + 1) + " of " + pages.length;
    window.scrollTo(0, 0);
    lms.set("cmi.core.lesson_location", String(current));
    if (current === pages.length - 1) finishCourse();
    else lms.commit();
  }

  function leave() {
    lms.set("cmi.core.session_time", timespan(Date.now() - started));
    lms.set("cmi.core.exit", completed ? "" : "suspend");
    lms.commit();
    lms.finish();
  }

  function pageOf(id) {
    var target = document.getElementById(id);
    var page = target ? target.closest(".sco-page") : null;
    return page ? pages.indexOf(page) : -1;
  }

  function init() {
    document.documentElement.classList.add("js");
    pages = Array.prototype.slice.call(document.querySelectorAll(".sco-page"));
    Array.prototype.forEach.call(document.querySelectorAll(".sco-feedback"), function (el) { el.hidden = true; });
    questions().forEach(function (question) {
      question.querySelector(".sco-check").addEventListener("click", function () { check(question); });
    });
    document.getElementById("sco-prev").addEventListener("click", function () { show(current - 1); });
    document.getElementById("sco-next").addEventListener("click", function () { show(current + 1); });
    document.addEventListener("click", function (event) {
      var link = event.target.closest && event.target.closest('a[href^="#"]');
      if (!link) return;
      var index = pageOf(link.getAttribute("href").slice(1));
      if (index >= 0) { event.preventDefault(); show(index); }
    });
    var notice = document.getElementById("sco-lms");
    if (lms.start()) {
      var status = lms.get("cmi.core.lesson_status");
      if (status === "" || status === "not attempted") lms.set("cmi.core.lesson_status", "incomplete");
      completed = status === "completed" || status === "passed";
      interactions = parseInt(lms.get("cmi.interactions._count"), 10) || 0;
      restore(lms.get("cmi.suspend_data"));
    } else {
      notice.textContent = "No learning platform found: this course works, but your progress is not recorded.";
      notice.hidden = false;
    }
    document.getElementById("sco-bar").hidden = false;
    window.addEventListener("pagehide", leave);
    var resume = parseInt(lms.get("cmi.core.lesson_location"), 10);
    show(isNaN(resume) ? 0 : resume);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
