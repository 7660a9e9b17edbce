// Browser test of the web console: the real `inferencecenter serve` on
// 127.0.0.1, Debian's chromium driven headless by puppeteer-core (which
// never downloads a browser), the fake NVML (tests/fakenvml) scripted
// through its file as tests/e2e/test_hardware.py does.
//
// Environment (CTest sets them; see tests/CMakeLists.txt):
//   IC_BIN, IC_STORIES, IC_TEST_MODELS, IC_FAKE_NVML  as for the Python e2e tests
//   IC_CHROMIUM   the browser (default /usr/bin/chromium)
//   IC_WEB_OUT    where screenshots and measurements go
//                 (default <repo>/build/test-output/web)
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const IC_BIN = process.env.IC_BIN || path.join(ROOT, "build/src/inferencecenter");
const STORIES = process.env.IC_STORIES || path.join(ROOT, "../shared/models/stories260K.gguf");
const TEST_MODELS = process.env.IC_TEST_MODELS || path.join(ROOT, "build/test-models");
const FAKE_NVML = process.env.IC_FAKE_NVML || path.join(ROOT, "build/tests/libfake_nvml.so");
const CHROMIUM = process.env.IC_CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.IC_WEB_OUT || path.join(ROOT, "build/test-output/web");

function isGguf(p) {
  try {
    const fd = fs.openSync(p, "r");
    const b = Buffer.alloc(4);
    fs.readSync(fd, b, 0, 4, 0);
    fs.closeSync(fd);
    return b.toString() === "GGUF";
  } catch { return false; }
}
const HAVE_STORIES = isGguf(STORIES);
const MODEL = HAVE_STORIES ? STORIES : path.join(TEST_MODELS, "tiny-f32.gguf");
// Greedy raw continuation of "Once upon a time" by stories260K.
const STORY = ", there was a little girl named Lily.";

const GPU = { name: "NVIDIA GeForce GTX 1060 3GB", utilization: 42, memory_total: 3221225472,
              memory_used: 1073741824, power: 80.5 };

function writeGpus(file, temp) {
  const lines = ["count 1"];
  for (const [k, v] of Object.entries({ ...GPU, temperature: temp })) lines.push(`0.${k} ${v}`);
  fs.writeFileSync(file + ".tmp", lines.join("\n") + "\n");
  fs.renameSync(file + ".tmp", file);        // the server never reads half a file
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}

// GET with exactly the headers given: { status, headers, body (Buffer) }.
function get(port, p, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: p, headers }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers,
                                    body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error("timeout")));
  });
}

class Server {
  static async start(dir, args = [], env = {}) {
    const s = new Server();
    s.port = await freePort();
    s.log = path.join(dir, `server-${s.port}.log`);
    const fd = fs.openSync(s.log, "w");
    s.proc = spawn(IC_BIN, ["serve", "--model", MODEL, "--host", "127.0.0.1", "--port",
                            String(s.port), "--threads", process.env.IC_THREADS || "1", ...args],
                   { stdio: ["ignore", fd, fd], env: { ...process.env, ...env } });
    fs.closeSync(fd);
    s.exited = new Promise((r) => s.proc.on("exit", (code, sig) => r({ code, sig })));
    const deadline = Date.now() + 30000;
    for (;;) {
      if (s.proc.exitCode !== null) throw new Error("server exited:\n" + fs.readFileSync(s.log, "utf8"));
      try { if ((await get(s.port, "/health")).status === 200) return s; } catch { /* not yet */ }
      if (Date.now() > deadline) throw new Error("server not healthy:\n" + fs.readFileSync(s.log, "utf8"));
      await sleep(50);
    }
  }
  get url() { return `http://127.0.0.1:${this.port}/`; }
  async stop() {
    if (this.proc.exitCode === null) this.proc.kill("SIGTERM");
    const r = await Promise.race([this.exited, sleep(20000).then(() => null)]);
    if (!r) { this.proc.kill("SIGKILL"); throw new Error("server did not exit on SIGTERM"); }
    assert.equal(r.code, 0, "server exit status:\n" + fs.readFileSync(this.log, "utf8"));
  }
}

// Runs before any page script: records CSP violations, and can rewrite the
// next TOKEN the console receives (window.__inject), as if the model had
// produced that text: the whole path from the socket to the DOM is the
// console's own.
function pageHooks() {
  window.__csp = [];
  document.addEventListener("securitypolicyviolation",
    (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
  const Native = window.WebSocket;
  window.__wsUrls = [];
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      window.__wsUrls.push(String(url));
    }
    set onmessage(fn) {
      super.onmessage = (ev) => {
        let data = ev.data;
        if (window.__inject !== undefined) {
          const m = JSON.parse(data);
          if (m.type === "TOKEN") {
            m.text = window.__inject;
            delete window.__inject;
            data = JSON.stringify(m);
          }
        }
        fn({ data });
      };
    }
  };
}

async function openPage(browser) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") page.errors.push(m.text()); });
  await page.evaluateOnNewDocument(pageHooks);
  return page;
}

const paneSel = (n) => `.pane[data-pane="${n}"]`;

async function setField(page, n, name, value) {
  await page.evaluate((sel, name, value) => {
    const el = document.querySelector(sel + " .s-" + name);
    if (el.type === "checkbox") el.checked = value; else el.value = String(value);
  }, paneSel(n), name, value);
}

async function typePrompt(page, n, text) {
  await page.click(paneSel(n) + " .prompt");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

const answerText = (page, n) => page.$eval(paneSel(n) + " .msg.assistant:last-of-type .body",
                                           (e) => e.textContent);
const lastReason = (page, n) => page.$eval(paneSel(n) + " .log",
  (log) => { const m = log.querySelectorAll(".msg.assistant"); return m.length ? m[m.length - 1].dataset.reason || null : null; });

// Counts canvas pixels near an RGB colour around (x, y) in CSS pixels.
function pixelsNear(page, id, x, y, rgb, radius = 4) {
  return page.evaluate((id, x, y, rgb, radius) => {
    const c = document.getElementById(id);
    const dpr = c.width / c.clientWidth;
    const r = Math.ceil(radius * dpr);
    const cx = Math.round(x * dpr), cy = Math.round(y * dpr);
    const d = c.getContext("2d").getImageData(cx - r, cy - r, 2 * r + 1, 2 * r + 1).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
      if (Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i + 1] - rgb[1]) < 40 &&
          Math.abs(d[i + 2] - rgb[2]) < 40 && d[i + 3] > 128) n++;
    return n;
  }, id, x, y, rgb, radius);
}

describe("web console", () => {
  let browser, dir;
  const measurements = {};

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM} (apt-get install chromium)`);
    assert.ok(fs.existsSync(FAKE_NVML), `IC_FAKE_NVML must name the fake NVML (${FAKE_NVML})`);
    fs.mkdirSync(OUT, { recursive: true });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "ic-web-"));
    browser = await puppeteer.launch({
      executablePath: CHROMIUM, headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
  });

  after(async () => {
    if (browser) await browser.close();
    fs.writeFileSync(path.join(OUT, "measurements.json"), JSON.stringify(measurements, null, 2) + "\n");
    console.log("measurements:", JSON.stringify(measurements));
  });

  test("GET / and its files carry the security and caching headers", async () => {
    const srv = await Server.start(dir);
    try {
      for (const p of ["/", "/console.js", "/console.css"]) {
        const r = await get(srv.port, p);
        assert.equal(r.status, 200, p);
        const csp = r.headers["content-security-policy"];
        assert.match(csp, /script-src 'self'(;|$)/);
        assert.match(csp, /connect-src 'self'(;|$)/);
        assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
        assert.equal(r.headers["x-content-type-options"], "nosniff");
        assert.equal(r.headers["referrer-policy"], "no-referrer");
        assert.match(r.headers["cache-control"], /no-cache/);
        assert.match(r.headers.etag, /^"[0-9a-f]{20}"$/);
        assert.equal(r.headers["content-encoding"], undefined);
        // Revalidation: the same ETag gives 304 with no body; another gives 200.
        const again = await get(srv.port, p, { "If-None-Match": r.headers.etag });
        assert.equal(again.status, 304, p);
        assert.equal(again.body.length, 0);
        assert.equal(again.headers.etag, r.headers.etag);
        assert.equal((await get(srv.port, p, { "If-None-Match": '"0000"' })).status, 200);
        // gzip when asked for, and it is the same file.
        const gz = await get(srv.port, p, { "Accept-Encoding": "br, gzip;q=0.8" });
        assert.equal(gz.headers["content-encoding"], "gzip");
        assert.ok(gz.body.length < r.body.length);
        assert.deepEqual(zlib.gunzipSync(gz.body), r.body);
        assert.notEqual(gz.headers.etag, r.headers.etag);
        assert.equal((await get(srv.port, p, { "Accept-Encoding": "gzip;q=0" }))
          .headers["content-encoding"], undefined);
      }
      assert.match((await get(srv.port, "/")).headers["content-type"], /^text\/html/);
      assert.match((await get(srv.port, "/console.js")).headers["content-type"], /^text\/javascript/);
      // The HTML has no inline script or handler for the CSP to refuse.
      const html = (await get(srv.port, "/")).body.toString();
      assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/);
      assert.doesNotMatch(html, /\son[a-z]+=/i);
      assert.equal((await get(srv.port, "/nope")).status, 404);
    } finally { await srv.stop(); }
  });

  test("open server: the prompt has focus, keyboard habits, weight and time to interactive", async () => {
    const srv = await Server.start(dir);
    const page = await openPage(browser);
    try {
      const cdp = await page.createCDPSession();
      await cdp.send("Network.enable");
      await cdp.send("Network.setCacheDisabled", { cacheDisabled: true });
      const sizes = new Map();
      cdp.on("Network.responseReceived", (e) => sizes.set(e.requestId, { url: e.response.url }));
      cdp.on("Network.loadingFinished", (e) => {
        if (sizes.has(e.requestId)) sizes.get(e.requestId).wire = e.encodedDataLength;
      });
      await page.goto(srv.url, { waitUntil: "load" });
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      const t = await page.evaluate(() => ({
        dcl: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd,
        load: performance.getEntriesByType("navigation")[0].loadEventEnd,
        ready: window.IC.readyAt,
        focus: document.activeElement && document.activeElement.classList.contains("prompt"),
        authHidden: document.getElementById("auth").hidden,
      }));
      assert.ok(t.focus, "the prompt box has focus on load");
      assert.ok(t.authHidden, "no token field on an open server");
      await sleep(300);
      const files = [...sizes.values()].filter((s) => s.url.startsWith(srv.url));
      assert.equal(files.length, 3, JSON.stringify(files));
      measurements.wire_bytes_gzip = files.reduce((a, f) => a + f.wire, 0);
      measurements.files = files.map((f) => ({ url: f.url.slice(srv.url.length - 1), wire_bytes: f.wire }));
      measurements.raw_bytes = 0;
      for (const p of ["/", "/console.js", "/console.css"])
        measurements.raw_bytes += (await get(srv.port, p)).body.length;
      measurements.dom_content_loaded_ms = Math.round(t.dcl);
      measurements.load_ms = Math.round(t.load);
      measurements.time_to_interactive_ms = Math.round(t.ready);   // HELLO in, Send enabled
      assert.ok(measurements.wire_bytes_gzip < measurements.raw_bytes);

      // Again in the warm browser, with its cache: the second load fills it,
      // on the third every file revalidates (no-cache) to 304.
      await cdp.send("Network.setCacheDisabled", { cacheDisabled: false });
      await page.goto(srv.url, { waitUntil: "load" });
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      // The status on the wire (DevTools shows a revalidated document as 200).
      const urls = new Map(), statuses = new Map();
      cdp.on("Network.requestWillBeSent", (e) => urls.set(e.requestId, e.request.url));
      cdp.on("Network.responseReceivedExtraInfo", (e) => statuses.set(e.requestId, e.statusCode));
      await page.goto(srv.url, { waitUntil: "load" });
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      const warm = await page.evaluate(() => ({ ready: window.IC.readyAt,
        dcl: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd }));
      measurements.warm_dom_content_loaded_ms = Math.round(warm.dcl);
      measurements.warm_time_to_interactive_ms = Math.round(warm.ready);
      await sleep(300);
      assert.deepEqual([...statuses.entries()].map(([id, st]) => [urls.get(id), st])
                         .filter(([u]) => u && u.startsWith(srv.url)).sort(),
                       [[srv.url, 304], [srv.url + "console.css", 304], [srv.url + "console.js", 304]]);

      // Shift+Enter is a new line, Enter sends; the answer streams and ends with stats.
      await page.keyboard.type("Once upon");
      await page.keyboard.down("Shift");
      await page.keyboard.press("Enter");
      await page.keyboard.up("Shift");
      await page.keyboard.type("a time");
      assert.equal(await page.$eval(paneSel(1) + " .prompt", (e) => e.value), "Once upon\na time");
      assert.equal(await page.$$eval(paneSel(1) + " .msg", (m) => m.length), 0);
      await setField(page, 1, "max_tokens", 8);
      await page.keyboard.press("Enter");
      await page.waitForFunction((sel) => document.querySelector(sel + " .end"), { timeout: 20000 },
                                 paneSel(1));
      assert.equal(await page.$eval(paneSel(1) + " .prompt", (e) => e.value), "");
      assert.equal(await page.$eval(paneSel(1) + " .msg.user", (e) => e.textContent), "Once upon\na time");
      const end = await page.$eval(paneSel(1) + " .end", (e) => e.textContent);
      assert.match(end, /^length · TTFT [\d.]+ m?s · [\d.]+ tok\/s · prompt \d+ · generated 8 · queue/);
      assert.deepEqual(page.errors, []);
      assert.deepEqual(await page.evaluate(() => window.__csp), []);
      assert.deepEqual(await page.evaluate(() => window.__wsUrls), [`ws://127.0.0.1:${srv.port}/ws`]);
    } finally { await page.close(); await srv.stop(); }
  });

  test("two sessions stream, Stop aborts, live view and thermal state, with tokens required", async () => {
    const gpus = path.join(dir, "gpus");
    writeGpus(gpus, 60);
    const tokens = path.join(dir, "tokens");
    const token = execFileSync(IC_BIN, ["token", "add", "alice", "--tokens", tokens]).toString().trim();
    const srv = await Server.start(dir, ["--tokens", tokens, "--temp-limit", 83, "--ctx-size", 32768,
                                         "--max-sessions", 4, "--prefix-cache", 0],
                                   { IC_NVML_LIBRARY: FAKE_NVML, IC_FAKE_NVML_FILE: gpus });
    const page = await openPage(browser);
    try {
      await page.goto(srv.url, { waitUntil: "load" });
      // HELLO says auth is required: the token field, with focus.
      await page.waitForSelector("#auth:not([hidden])", { timeout: 10000 });
      assert.ok(await page.evaluate(() => document.activeElement.id === "token"));
      assert.ok(await page.$eval(paneSel(1) + " .send", (b) => b.disabled));
      // A wrong token is refused and cleared; the right one connects.
      await page.keyboard.type("ic_" + "0".repeat(64));
      await page.keyboard.press("Enter");
      await page.waitForFunction(() => /Token refused: invalid token/.test(
        document.getElementById("auth-msg").textContent), { timeout: 10000 });
      assert.equal(await page.evaluate(() => sessionStorage.getItem("ic_token")), null);
      await page.waitForSelector("#token:focus");
      await page.keyboard.type(token);
      await page.keyboard.press("Enter");
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      assert.equal(await page.evaluate(() => sessionStorage.getItem("ic_token")), token);
      assert.equal(await page.evaluate(() => localStorage.length), 0);
      assert.ok(!page.url().includes(token) && page.url() === srv.url);
      assert.ok((await page.evaluate(() => window.__wsUrls)).every((u) => !u.includes("ic_")));

      // Two sessions, each its own settings, both generating at once.
      await page.click("#new-session");
      for (const n of [1, 2]) {
        await setField(page, n, "raw", true);
        await setField(page, n, "ignore_eos", true);
        await setField(page, n, "temperature", 0);
        await setField(page, n, "max_tokens", 100000);
      }
      await setField(page, 2, "system", "Once upon a");
      await typePrompt(page, 1, "Once upon a time");
      await typePrompt(page, 2, " time");
      for (const n of [1, 2])
        await page.waitForFunction((sel) => {
          const b = document.querySelector(sel + " .msg.assistant .body");
          return b && b.textContent.length > 40;
        }, { timeout: 20000 }, paneSel(n));
      for (const n of [1, 2]) {
        assert.equal(await page.$eval(paneSel(n), (p) => p.dataset.running), "1");
        if (HAVE_STORIES) assert.ok((await answerText(page, n)).startsWith(STORY));
      }
      assert.match(await page.$eval(paneSel(1) + " .pane-sid", (e) => e.textContent), /^s\d+$/);
      // The live view sees them.
      await page.waitForFunction(() => document.getElementById("m-sessions").textContent.startsWith("2 /") &&
        Number(document.getElementById("m-tps").textContent) > 0 &&
        Number(document.getElementById("m-generating").textContent) === 2, { timeout: 10000 });
      await page.screenshot({ path: path.join(OUT, "chat.png") });

      // Stop (the button) in one; the other keeps going; Escape stops it.
      await page.click(paneSel(1) + " .stop");
      await page.waitForFunction((sel) => document.querySelector(sel + " .end"), { timeout: 10000 },
                                 paneSel(1));
      assert.equal(await lastReason(page, 1), "abort");
      assert.match(await page.$eval(paneSel(1) + " .end", (e) => e.textContent), /^abort · TTFT/);
      assert.equal(await page.$eval(paneSel(2), (p) => p.dataset.running), "1");
      const len2 = (await answerText(page, 2)).length;
      await page.waitForFunction((sel, n) => document.querySelector(sel + " .msg.assistant .body")
        .textContent.length > n, { timeout: 10000 }, paneSel(2), len2);

      // The fake GPU: 60 °C drawn under the limit line, then 90 °C: throttled
      // (the guard reads the temperature while work runs: session 2 still is).
      await page.waitForSelector('.gpu[data-temp="60"]', { timeout: 10000 });
      assert.match(await page.$eval(".gpu", (e) => e.textContent), /GTX 1060.*60 °C.*VRAM 1\.00 GiB \/ 3\.00 GiB.*42 % util · 80\.5 W/);
      let chart = await page.evaluate(() => window.IC.app.tempChart);
      assert.equal(chart.latest.length, 1);
      assert.ok(chart.latest[0].y > chart.limitY, "60 °C is drawn below the limit line");
      assert.ok(await pixelsNear(page, "chart-temp", chart.latest[0].x, chart.latest[0].y, [37, 99, 235]) > 4);
      assert.equal(await page.$eval("#state", (e) => e.dataset.state), "ready");
      writeGpus(gpus, 90);
      await page.waitForFunction(() => document.getElementById("state").dataset.state === "throttled",
                                 { timeout: 10000 });
      await page.waitForSelector('.gpu[data-temp="90"] .temp.hot', { timeout: 5000 });
      assert.equal(await page.$eval("#state", (e) => e.textContent), "throttled");
      assert.match(await page.$eval("#state-note", (e) => e.textContent), /temperature limit/);
      chart = await page.evaluate(() => window.IC.app.tempChart);
      assert.ok(chart.latest[0].y < chart.limitY, "90 °C is drawn above the limit line");
      assert.ok(await pixelsNear(page, "chart-temp", chart.latest[0].x, chart.latest[0].y, [37, 99, 235]) > 4);
      await page.screenshot({ path: path.join(OUT, "throttled.png") });
      writeGpus(gpus, 60);
      await page.waitForFunction(() => document.getElementById("state").dataset.state === "ready",
                                 { timeout: 10000 });
      // Escape stops the running answer of the pane with focus.
      assert.equal(await page.$eval(paneSel(2), (p) => p.dataset.running), "1");
      await page.click(paneSel(2) + " .prompt");
      await page.keyboard.press("Escape");
      await page.waitForFunction((sel) => document.querySelector(sel + " .end"), { timeout: 10000 },
                                 paneSel(2));
      assert.equal(await lastReason(page, 2), "abort");

      // Model output with HTML in it is text, through the real stream.
      const evil = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> ' +
                   '**<b>bold</b>**\n```html\n<img src=y onerror="window.__pwned=3">\n```\n' +
                   '[click](javascript:window.__pwned=4)';
      await page.evaluate((s) => { window.__inject = s; }, evil);
      await setField(page, 1, "max_tokens", 3);
      await setField(page, 1, "ignore_eos", false);
      await typePrompt(page, 1, " Lily");
      await page.waitForFunction((sel) => document.querySelectorAll(sel + " .end").length === 2,
                                 { timeout: 20000 }, paneSel(1));
      const shown = await page.$eval(paneSel(1) + " .msg.assistant:last-of-type .body", (b) => ({
        text: b.textContent, imgs: b.querySelectorAll("img").length,
        scripts: b.querySelectorAll("script").length, links: b.querySelectorAll("a").length,
        strong: [...b.querySelectorAll("strong")].map((e) => e.textContent),
        code: [...b.querySelectorAll("pre code")].map((e) => e.textContent),
      }));
      assert.ok(shown.text.startsWith('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'),
                shown.text);
      assert.equal(shown.imgs, 0);
      assert.equal(shown.scripts, 0);
      assert.equal(shown.links, 0);
      assert.deepEqual(shown.strong, ["<b>bold</b>"]);
      assert.deepEqual(shown.code, ['<img src=y onerror="window.__pwned=3">']);
      await sleep(200);
      assert.equal(await page.evaluate(() => window.__pwned), undefined);

      // A reload in the same tab reconnects with the token from sessionStorage.
      await page.reload({ waitUntil: "load" });
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      assert.ok(await page.$eval("#auth", (e) => e.hidden));
      assert.deepEqual(page.errors.filter((e) => !/ERR_|net::/.test(e)), []);
      assert.deepEqual(await page.evaluate(() => window.__csp), []);
    } finally { await page.close(); await srv.stop(); }
  });

  test("the markdown renderer builds DOM from text, never HTML", async () => {
    const srv = await Server.start(dir);
    const page = await openPage(browser);
    try {
      await page.goto(srv.url, { waitUntil: "load" });
      await page.waitForSelector("body[data-ready='1']", { timeout: 10000 });
      const r = await page.evaluate(() => {
        const d = document.createElement("div");
        document.body.appendChild(d);
        d.appendChild(window.IC.renderMarkdown([
          "# Title <i>x</i>",
          "Some `<script>alert(1)</script>` and *em <u>u</u>* and [ok](https://example.com/a).",
          "- one <img src=x onerror=\"window.__pwned=1\">",
          "- two",
          "1. first",
          "```js",
          "const a = '<script>';",
          "```",
          "[bad](javascript:alert(1)) [data](data:text/html,hi)",
        ].join("\n")));
        const res = {
          tags: [...d.querySelectorAll("*")].map((e) => e.tagName.toLowerCase()),
          hrefs: [...d.querySelectorAll("a")].map((a) => a.href),
          code: [...d.querySelectorAll("code")].map((c) => c.textContent),
          h: d.querySelector("h2").textContent,
          li: [...d.querySelectorAll("li")].map((e) => e.textContent),
          lang: d.querySelector("pre code").dataset.lang,
        };
        d.remove();
        return res;
      });
      assert.deepEqual(r.tags, ["h2", "p", "code", "em", "a", "ul", "li", "li", "ol", "li", "pre", "code", "p"]);
      assert.deepEqual(r.hrefs, ["https://example.com/a"]);
      assert.deepEqual(r.code, ["<script>alert(1)</script>", "const a = '<script>';"]);
      assert.equal(r.h, "Title <i>x</i>");
      assert.deepEqual(r.li, ['one <img src=x onerror="window.__pwned=1">', "two", "first"]);
      assert.equal(r.lang, "js");
      assert.equal(await page.evaluate(() => window.__pwned), undefined);
    } finally { await page.close(); await srv.stop(); }
  });

  test("--no-web: GET / is 404", async () => {
    const srv = await Server.start(dir, ["--no-web"]);
    try {
      for (const p of ["/", "/console.js", "/console.css"])
        assert.equal((await get(srv.port, p)).status, 404, p);
      assert.equal((await get(srv.port, "/health")).status, 200);
    } finally { await srv.stop(); }
  });
});
