// Plays a SCORM 1.2 package in headless Chromium with scorm-again as the LMS runtime, and a
// scripted learner who reads every page and answers the quizzes.
//
//   node tests/browser/play_scorm.mjs '<json spec>'
//   spec: {"chromium": path, "package": unpacked package folder, "answers": {question id:
//          option letter or text}, "resumeAfter": page count or null, "shots": {"lesson",
//          "end"}: paths}
//
// A small HTTP server on 127.0.0.1 serves the LMS page (scorm-again's Scorm12API as window.API,
// the package in an iframe, as an LMS launches a SCO), scorm-again's script from node_modules
// and the package. The launch file comes from the package's imsmanifest.xml. Every LMSSetValue
// and its error code is recorded. With resumeAfter, the learner leaves after that many pages
// and the SCO is launched again with the data the LMS kept (cmi.suspend_data, location).
// Prints one JSON document: {cmi, calls, errors, consoleErrors, pageErrors, pages, resumed}.
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { extname, join, normalize, resolve } from "node:path";
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2]);
const root = resolve(spec.package);
const runtime = resolve("node_modules/scorm-again/dist/scorm12.min.js");
const manifest = await readFile(join(root, "imsmanifest.xml"), "utf8");
const launch = /<resource\b[^>]*\bhref="([^"]+)"[^>]*scormtype="sco"/.exec(manifest)?.[1];
if (!launch) throw new Error("no SCO resource with an href in imsmanifest.xml");

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".xml": "application/xml" };
const LMS_PAGE = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>LMS</title>
<link rel="icon" href="data:,"><script src="/scorm-again.js"></script><script>
  window.calls = [];
  window.startLms = (saved) => {
    window.API = new Scorm12API({ autocommit: false, logLevel: 5 });
    if (saved) window.API.loadFromJSON(saved);
    const set = window.API.LMSSetValue.bind(window.API);
    window.API.LMSSetValue = (element, value) => {
      const result = set(element, value);
      window.calls.push({ element, value, result: String(result), error: String(window.API.LMSGetLastError()) });
      return result;
    };
    for (const name of ["LMSInitialize", "LMSCommit", "LMSFinish"]) {
      const call = window.API[name].bind(window.API);
      window.API[name] = (arg) => {
        const result = call(arg);
        window.calls.push({ element: name, value: "", result: String(result), error: String(window.API.LMSGetLastError()) });
        return result;
      };
    }
  };
</script></head><body><iframe id="sco" title="course" style="width:1280px;height:900px;border:0"></iframe></body></html>`;

const server = createServer(async (request, response) => {
  const url = new URL(request.url, "http://127.0.0.1");
  try {
    if (url.pathname === "/lms.html") return send(response, "text/html", LMS_PAGE);
    if (url.pathname === "/scorm-again.js") return send(response, TYPES[".js"], await readFile(runtime));
    if (url.pathname.startsWith("/package/")) {
      const file = normalize(join(root, decodeURIComponent(url.pathname.slice("/package/".length))));
      if (!file.startsWith(root)) throw new Error("outside the package");
      return send(response, TYPES[extname(file)] || "application/octet-stream", await readFile(file));
    }
  } catch (error) {
    // fall through to 404
  }
  response.writeHead(404).end();
});
function send(response, type, body) {
  response.writeHead(200, { "Content-Type": type }).end(body);
}
await new Promise((done) => server.listen(0, "127.0.0.1", done));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: spec.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
});
const result = { consoleErrors: [], pageErrors: [], pages: [], resumed: null };

async function launchSco(page, saved) {
  await page.evaluate((data) => window.startLms(data), saved);
  await page.evaluate((src) => { document.getElementById("sco").src = src; }, `${base}/package/${launch}`);
  const frame = page.frameLocator("#sco");
  await frame.locator("#sco-bar:not([hidden])").waitFor();
  return frame;
}

async function answerPage(frame) {
  const questions = frame.locator(".sco-page.current .sco-question");
  for (let i = 0; i < (await questions.count()); i += 1) {
    const question = questions.nth(i);
    if (await question.locator(".sco-check").isDisabled()) continue; // answered before: restored
    const id = await question.getAttribute("data-question");
    const answer = spec.answers[id];
    if (answer === undefined) continue;
    if ((await question.getAttribute("data-kind")) === "text") await question.locator("textarea").fill(answer);
    else await question.locator(`input[value="${answer}"]`).check();
    await question.locator(".sco-check").click();
    await question.locator(".sco-feedback:not([hidden])").waitFor();
  }
}

async function readPages(frame, page, limit) {
  for (let n = 0; n < limit; n += 1) {
    result.pages.push(await frame.locator("#sco-progress").textContent());
    await answerPage(frame);
    if (spec.shots?.lesson && (await frame.locator(".sco-page.current .sco-question").count()) > 0 && !result.lessonShot) {
      await page.screenshot({ path: spec.shots.lesson, fullPage: false });
      result.lessonShot = spec.shots.lesson;
    }
    if (await frame.locator("#sco-next").isDisabled()) return true; // the last page
    await frame.locator("#sco-next").click();
  }
  return false;
}

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.route("**/*", (route) => (route.request().url().startsWith(base) || route.request().url().startsWith("data:") ? route.continue() : route.abort()));
  const page = await context.newPage();
  page.on("console", (message) => { if (message.type() === "error") result.consoleErrors.push(message.text()); });
  page.on("pageerror", (error) => result.pageErrors.push(String(error)));
  page.on("frameattached", (frame) => frame);
  await page.goto(`${base}/lms.html`);

  let frame = await launchSco(page, null);
  if (spec.resumeAfter) {
    await readPages(frame, page, spec.resumeAfter);
    await page.evaluate(() => { document.getElementById("sco").src = "about:blank"; }); // the learner leaves
    await page.waitForFunction(() => window.API.isTerminated());
    const saved = await page.evaluate(() => JSON.parse(JSON.stringify(window.API.cmi)));
    result.firstSession = { lesson_status: saved.core.lesson_status, lesson_location: saved.core.lesson_location, suspend_data: saved.suspend_data };
    frame = await launchSco(page, { core: { lesson_status: saved.core.lesson_status, lesson_location: saved.core.lesson_location }, suspend_data: saved.suspend_data });
    result.resumed = { progress: await frame.locator("#sco-progress").textContent(), restored: await frame.locator(".sco-question .sco-check:disabled").count() };
  }
  await readPages(frame, page, 1000);
  if (spec.shots?.end) await page.screenshot({ path: spec.shots.end, fullPage: false });
  result.endText = await frame.locator("#sco-result").textContent();
  await page.evaluate(() => { document.getElementById("sco").src = "about:blank"; });
  await page.waitForFunction(() => window.API.isTerminated());
  // The LMS's record, as scorm-again would commit it (cmi.core.exit is write-only to a SCO).
  Object.assign(result, await page.evaluate(() => ({ cmi: JSON.parse(JSON.stringify(window.API.cmi)), calls: window.calls })));
  result.errors = result.calls.filter((call) => call.result !== "true" || call.error !== "0");
  process.stdout.write(JSON.stringify(result));
} finally {
  await browser.close();
  server.close();
}
