// Opens pages in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and
// reports what a person would meet: console errors, uncaught errors, dialogs (an alert() from
// injected script), requests that leave the machine, scripts and event-handler attributes in
// the DOM, the visible text, and screenshots.
//
//   node tests/browser/probe_pages.mjs '<json spec>'
//   spec: {"chromium": path, "pages": [{"url", "cookies"?: [...], "shots": [{"path", "width",
//          "height", "fullPage"?}]}]}
// Prints one JSON document: {"pages": [{url, status, consoleErrors, pageErrors, dialogs,
// external, scripts, handlers, jsLinks, text, svgs, overflowX (one per shot), screenshots}]}
import { chromium } from "playwright-core";

const spec = JSON.parse(process.argv[2]);
const LOCAL = /^(file:|data:|about:|https?:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?\/)/;

const browser = await chromium.launch({
  executablePath: spec.chromium || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
});

async function probe(pageSpec) {
  const result = {
    url: pageSpec.url, consoleErrors: [], pageErrors: [], dialogs: [], external: [], screenshots: [], overflowX: [],
  };
  for (const [index, shot] of (pageSpec.shots || [{ width: 1280, height: 900 }]).entries()) {
    const context = await browser.newContext({ viewport: { width: shot.width, height: shot.height } });
    if (pageSpec.cookies) await context.addCookies(pageSpec.cookies);
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (LOCAL.test(url)) return route.continue();
      result.external.push(url);
      return route.abort();
    });
    const page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") result.consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => result.pageErrors.push(String(error)));
    page.on("dialog", async (dialog) => {
      result.dialogs.push(dialog.message());
      await dialog.dismiss();
    });
    const response = await page.goto(pageSpec.url, { waitUntil: "load" });
    if (index === 0) {
      result.status = response ? response.status() : null;
      Object.assign(result, await page.evaluate(() => ({
        title: document.title,
        text: document.body.innerText,
        scripts: document.scripts.length,
        handlers: [...document.querySelectorAll("*")].flatMap((el) =>
          [...el.attributes].filter((a) => a.name.toLowerCase().startsWith("on")).map((a) => `${el.tagName}[${a.name}]`)),
        jsLinks: [...document.querySelectorAll("[href],[src],[action],[formaction]")]
          .map((el) => el.getAttribute("href") || el.getAttribute("src") || el.getAttribute("action") || el.getAttribute("formaction"))
          .filter((v) => /^\s*(javascript|vbscript|data:text\/html)/i.test(v || "")),
        svgs: [...document.querySelectorAll("svg.mind-map")].map((svg) => {
          const box = svg.getBoundingClientRect();
          return { width: box.width, height: box.height, nodes: svg.querySelectorAll("g.mm-node").length };
        }),
      })));
    }
    // Sideways scrolling of the whole page at this width (0: none).
    result.overflowX.push(await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth));
    if (shot.path) {
      await page.screenshot({ path: shot.path, fullPage: Boolean(shot.fullPage) });
      result.screenshots.push(shot.path);
    }
    await context.close();
  }
  return result;
}

try {
  const pages = [];
  for (const pageSpec of spec.pages) pages.push(await probe(pageSpec));
  process.stdout.write(JSON.stringify({ pages }));
} finally {
  await browser.close();
}
