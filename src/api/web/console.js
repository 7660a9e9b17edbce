// The InferenceCenter web console (see console.html): chat sessions and a
// live view over protocol v1 on the page's own /ws. Plain browser JS, no
// libraries. Model output is put into the page only through textContent and
// createElement: never innerHTML.
"use strict";
(function () {
  const WINDOW_MS = 5 * 60 * 1000;      // the live view's rolling window
  const DEFAULT_TEMP_LIMIT = 83;        // serve's --temp-limit default
  const TOKEN_KEY = "ic_token";
  const $ = (sel, root) => (root || document).querySelector(sel);

  // ---------------------------------------------------------------- markdown

  // Renders a small markdown subset (fenced code, headings, lists,
  // paragraphs, **bold**, *italic*, `code`, http(s) links) as DOM nodes.
  // Text only ever becomes text nodes.
  function renderMarkdown(src) {
    const frag = document.createDocumentFragment();
    const lines = String(src).split("\n");
    let para = [], list = null;
    const flushPara = () => {
      if (para.length) {
        const p = document.createElement("p");
        inline(p, para.join("\n"));
        frag.appendChild(p);
        para = [];
      }
    };
    const flushList = () => { if (list) { frag.appendChild(list); list = null; } };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      const fence = /^\s*(```|~~~)\s*([\w+.-]*)\s*$/.exec(line);
      if (fence) {
        flushPara(); flushList();
        const body = [];
        let j = i + 1;
        while (j < lines.length && !new RegExp("^\\s*" + fence[1] + "\\s*$").test(lines[j]))
          body.push(lines[j++]);
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        if (fence[2]) code.dataset.lang = fence[2];
        code.textContent = body.join("\n");
        pre.appendChild(code);
        frag.appendChild(pre);
        i = j;                        // the closing fence (or the end, while streaming)
        continue;
      }
      const h = /^(#{1,6})\s+(.*)$/.exec(line);
      if (h) {
        flushPara(); flushList();
        const el = document.createElement("h" + Math.min(h[1].length + 1, 3));
        inline(el, h[2]);
        frag.appendChild(el);
        continue;
      }
      const li = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line);
      if (li) {
        flushPara();
        const tag = /\d/.test(li[1]) ? "ol" : "ul";
        if (!list || list.tagName.toLowerCase() !== tag) { flushList(); list = document.createElement(tag); }
        const item = document.createElement("li");
        inline(item, li[2]);
        list.appendChild(item);
        continue;
      }
      if (line.trim() === "") { flushPara(); flushList(); continue; }
      flushList();
      para.push(line);
    }
    flushPara(); flushList();
    return frag;
  }

  // Inline spans: `code`, **bold**, *italic*, [text](http...).
  function inline(parent, text) {
    const re = /`([^`\n]+)`|\*\*([^*\n]+)\*\*|\*([^*\n]+)\*|\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g;
    let last = 0, m;
    while ((m = re.exec(text))) {
      if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
      let el;
      if (m[1] !== undefined) { el = document.createElement("code"); el.textContent = m[1]; }
      else if (m[2] !== undefined) { el = document.createElement("strong"); el.textContent = m[2]; }
      else if (m[3] !== undefined) { el = document.createElement("em"); el.textContent = m[3]; }
      else {
        el = document.createElement("a");
        el.textContent = m[4];
        el.href = m[5];               // only http(s): the pattern allows nothing else
        el.rel = "noopener noreferrer nofollow";
        el.target = "_blank";
      }
      parent.appendChild(el);
      last = re.lastIndex;
    }
    if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
  }

  // ------------------------------------------------------------- connection

  const app = {
    ws: null, hello: null, authed: false, connState: "connecting",
    nextId: 1, pending: new Map(),   // message id -> what it was for
    panes: [], active: null, history: [], lastMetrics: null,
    retryMs: 500, retryTimer: 0, authFailed: false,
  };

  function send(msg) {
    if (!app.ws || app.ws.readyState !== WebSocket.OPEN) return false;
    app.ws.send(JSON.stringify(msg));
    return true;
  }

  function newId(prefix, what) {
    const id = prefix + app.nextId++;
    app.pending.set(id, what);
    return id;
  }

  function setConn(state, text) {
    app.connState = state;
    const el = $("#conn");
    el.dataset.conn = state;
    el.textContent = text || state;
    for (const p of app.panes) p.refresh();
  }

  function connect() {
    clearTimeout(app.retryTimer);
    if (app.ws) { app.ws.onclose = null; app.ws.close(); }
    app.authed = false;
    setConn("connecting", "connecting");
    // Same host and port as the page: the server's Origin check accepts it.
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    const ws = new WebSocket(url);
    app.ws = ws;
    ws.onmessage = (ev) => { if (app.ws === ws) onMessage(JSON.parse(ev.data)); };
    ws.onclose = (ev) => { if (app.ws === ws) onClose(ev); };
  }

  function onClose(ev) {
    app.ws = null;
    app.authed = false;
    app.pending.clear();
    for (const p of app.panes) p.lost();
    if (ev.code === 4001 || app.authFailed) {
      setConn("auth", "token refused");
      showAuth(true);
      return;                         // wait for a new token
    }
    setConn("closed", "disconnected; retrying");
    app.retryTimer = setTimeout(connect, app.retryMs);
    app.retryMs = Math.min(app.retryMs * 2, 5000);
  }

  function showAuth(show, msg) {
    const form = $("#auth");
    form.hidden = !show;
    if (msg !== undefined) $("#auth-msg").textContent = msg;
    if (show) $("#token").focus();
  }

  function onAuthed() {
    app.authed = true;
    app.authFailed = false;
    app.retryMs = 500;
    setConn("open", "connected");
    showAuth(false, "");
    send({ type: "SUBSCRIBE_METRICS", interval_ms: 1000, id: "live" });
    document.body.dataset.ready = "1";
    if (!window.IC.readyAt) window.IC.readyAt = performance.now();   // time to interactive
    for (const p of app.panes) p.flush();
  }

  function onMessage(m) {
    const what = m.id !== undefined ? app.pending.get(m.id) : undefined;
    switch (m.type) {
    case "HELLO":
      app.hello = m;
      $("#model").textContent = m.model ? m.model.name + " · " + fmtCount(m.model.n_params) +
        " params · ctx " + m.limits.n_ctx_per_session : "";
      if (!m.auth_required) { onAuthed(); break; }
      {
        const token = sessionStorage.getItem(TOKEN_KEY);
        if (token) send({ type: "AUTH", token, id: newId("a", { kind: "auth" }) });
        else { setConn("auth", "token needed"); showAuth(true); }
      }
      break;
    case "AUTH_SUCCESS":
      app.pending.delete(m.id);
      onAuthed();
      break;
    case "AUTH_FAILED":
      app.authFailed = true;
      sessionStorage.removeItem(TOKEN_KEY);
      showAuth(true, "Token refused: " + m.reason);
      break;
    case "METRICS":
      onMetrics(m);
      break;
    default:
      if (what && what.pane) what.pane.onMessage(m, what);
      else if (m.session_id) {
        const p = app.panes.find((x) => x.sid === m.session_id);
        if (p) p.onMessage(m, what || {});
      } else if (m.type === "ERROR") {
        if (m.code === "unauthenticated") { setConn("auth", "token needed"); showAuth(true, m.message); }
        else console.warn("server error", m);
      }
    }
  }

  // ------------------------------------------------------------------ panes

  let paneCount = 0;

  class Pane {
    constructor() {
      this.n = ++paneCount;
      this.el = $("#pane-tpl").content.firstElementChild.cloneNode(true);
      this.el.dataset.pane = String(this.n);
      this.sid = null;             // the server's session id once created
      this.creating = false;
      this.queue = [];             // prompts waiting for the session
      this.run = null;             // the answer being streamed
      this.mode = null;            // "raw" or "chat" once the first INFER went
      $(".pane-title", this.el).textContent = "Session " + this.n;
      this.prompt = $(".prompt", this.el);
      this.log = $(".log", this.el);
      $(".send", this.el).onclick = () => this.submit();
      $(".stop", this.el).onclick = () => this.stop();
      $(".pane-close", this.el).onclick = () => this.close();
      this.prompt.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.submit(); }
      });
      this.el.addEventListener("focusin", () => setActive(this));
      $("#panes").appendChild(this.el);
      this.refresh();
    }
    field(name) { return $(".s-" + name, this.el); }
    params() {
      const p = {};
      for (const k of ["temperature", "top_p", "min_p"]) {
        const v = this.field(k).value;
        if (v !== "") p[k] = Number(v);
      }
      for (const k of ["top_k", "max_tokens", "seed"]) {
        const v = this.field(k).value;
        if (v !== "") p[k] = Math.trunc(Number(v));
      }
      if (this.field("ignore_eos").checked) p.ignore_eos = true;
      return p;
    }
    refresh() {
      const running = !!this.run;
      $(".send", this.el).disabled = running || !app.authed;
      $(".stop", this.el).disabled = !running || !this.run.requestSent;
      this.field("system").disabled = !!this.sid || this.creating;
      this.field("raw").disabled = !!this.mode;
      $(".pane-sid", this.el).textContent = this.sid || "";
      $(".pane-status", this.el).textContent = running ? "generating" : "";
      this.el.dataset.running = running ? "1" : "0";
    }
    add(cls, text) {
      const d = document.createElement("div");
      d.className = "msg " + cls;
      if (text !== undefined) d.textContent = text;
      this.log.appendChild(d);
      this.log.scrollTop = this.log.scrollHeight;
      return d;
    }
    submit() {
      const text = this.prompt.value;
      if (this.run || !app.authed || text.trim() === "") return;
      this.prompt.value = "";
      this.add("user", text);
      const body = document.createElement("div");
      body.className = "body cursor";
      const msg = this.add("assistant");
      msg.appendChild(body);
      this.run = { text: "", body, msg, requestSent: false, dirty: false, id: null };
      this.queue.push(text);
      this.refresh();
      this.flush();
    }
    flush() {                      // sends what waits, creating the session first
      if (!app.authed || !this.queue.length) return;
      if (!this.sid) {
        if (this.creating) return;
        this.creating = true;
        const msg = { type: "CREATE_SESSION", id: newId("c", { pane: this, kind: "create" }) };
        const sys = this.field("system").value;
        if (sys !== "") msg.system = sys;
        send(msg);
        this.refresh();
        return;
      }
      const prompt = this.queue.shift();
      const raw = this.mode ? this.mode === "raw" : this.field("raw").checked;
      this.mode = raw ? "raw" : "chat";
      const id = newId("q", { pane: this, kind: "infer" });
      this.run.id = id;
      this.run.requestSent = send({ type: "INFER", session_id: this.sid, prompt, raw,
                                    params: this.params(), id });
      this.refresh();
    }
    stop() {
      if (this.run && this.run.requestSent && !this.run.abortSent) {
        this.run.abortSent = true;
        send({ type: "ABORT", session_id: this.sid, id: newId("x", { pane: this, kind: "abort" }) });
      }
    }
    close() {
      if (this.sid) send({ type: "CLOSE_SESSION", session_id: this.sid,
                           id: newId("k", { pane: this, kind: "close" }) });
      this.el.remove();
      app.panes = app.panes.filter((p) => p !== this);
      if (app.active === this) setActive(app.panes[0] || null);
      if (app.active) app.active.prompt.focus();
    }
    lost() {                       // the connection went: the server closed the session
      const had = !!this.sid;
      this.sid = null;
      this.creating = false;
      this.mode = null;
      if (this.run) this.finish(null, "connection lost");
      this.queue = [];
      if (had) this.add("note", "connection lost: the next message starts a new session");
      this.refresh();
    }
    onMessage(m, what) {
      switch (m.type) {
      case "SESSION_CREATED":
        app.pending.delete(m.id);
        this.sid = m.session_id;
        this.creating = false;
        this.refresh();
        this.flush();
        break;
      case "TOKEN":
        if (!this.run || m.id !== this.run.id) break;
        this.run.text += m.text;
        this.run.tokens = (this.run.tokens || 0) + 1;
        this.scheduleRender();
        break;
      case "END":
        if (!this.run || m.id !== this.run.id) break;
        app.pending.delete(m.id);
        this.finish(m);
        break;
      case "SESSION_CLOSED":
        app.pending.delete(m.id);
        if (m.reason !== "client") { this.sid = null; this.mode = null; this.refresh(); }
        break;
      case "ERROR":
        app.pending.delete(m.id);
        if (what.kind === "create") { this.creating = false; this.queue = []; }
        if (what.kind === "abort" && m.code === "not_running") break;
        if (this.run && (what.kind === "infer" || what.kind === "create")) this.finish(null, m.code + ": " + m.message);
        else this.add("error", m.code + ": " + m.message);
        break;
      }
    }
    scheduleRender() {
      if (this.run.dirty) return;
      this.run.dirty = true;
      const run = this.run;
      requestAnimationFrame(() => { run.dirty = false; this.render(run); });
    }
    render(run) {
      const stick = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 40;
      run.body.replaceChildren(renderMarkdown(run.text));
      if (stick) this.log.scrollTop = this.log.scrollHeight;
    }
    finish(end, error) {
      const run = this.run;
      this.run = null;
      this.render(run);
      run.body.classList.remove("cursor");
      const line = document.createElement("div");
      line.className = "end";
      if (end) {
        const s = end.stats || {};
        const reason = document.createElement("span");
        reason.className = "reason";
        reason.dataset.reason = end.reason;
        reason.textContent = end.reason;
        line.appendChild(reason);
        line.appendChild(document.createTextNode(
          " · TTFT " + fmtMs(s.ttft_ms) + " · " + fmt1(s.tokens_per_second) + " tok/s · prompt " +
          s.prompt_tokens + " · generated " + s.generated_tokens + " · queue " + fmtMs(s.queue_ms) +
          " · total " + fmtMs(s.total_ms)));
        run.msg.dataset.reason = end.reason;
      } else {
        line.classList.add("error");
        line.textContent = error;
        run.msg.dataset.reason = "error";
      }
      run.msg.appendChild(line);
      this.log.scrollTop = this.log.scrollHeight;
      this.refresh();
      if (this.queue.length) this.flush();
    }
  }

  function setActive(p) {
    if (app.active === p) return;
    if (app.active) app.active.el.classList.remove("active");
    app.active = p;
    if (p) p.el.classList.add("active");
  }

  function addPane() {
    const p = new Pane();
    app.panes.push(p);
    setActive(p);
    p.prompt.focus();
    return p;
  }

  // -------------------------------------------------------------- live view

  const STATE_NOTES = {
    ready: "serving at full speed",
    throttled: "a GPU is at the temperature limit: new prompts wait, decoding is paced",
    sleeping: "model unloaded while idle: the next prompt reloads it",
    loading: "loading the model",
    stuck: "the scheduler makes no progress with work waiting",
  };

  function tempLimit(m) {
    const e = m && m.engine;
    if (e && typeof e.temp_limit_c === "number") return { c: e.temp_limit_c, known: true };
    const l = app.hello && app.hello.limits;
    if (l && typeof l.temp_limit_c === "number") return { c: l.temp_limit_c, known: true };
    return { c: DEFAULT_TEMP_LIMIT, known: false };
  }

  function onMetrics(m) {
    app.lastMetrics = m;
    const e = m.engine;
    const st = $("#state");
    st.dataset.state = e.state;
    st.textContent = e.state;
    $("#state-note").textContent = STATE_NOTES[e.state] || "";
    $("#m-tps").textContent = fmt1(e.tokens_per_second);
    $("#m-sessions").textContent = e.sessions + (e.max_sessions ? " / " + e.max_sessions : "");
    $("#m-queued").textContent = String(e.queued);
    $("#m-generating").textContent = String(e.generating);
    $("#m-kv").textContent = fmtCount(e.kv_cells_used) + " / " + fmtCount(e.kv_cells_total);
    $("#m-cpu").textContent = m.system ? fmt1(m.system.cpu_pct) : "-";
    const lim = tempLimit(m);
    $("#limit-label").textContent = lim.c > 0
      ? "· limit " + lim.c + " °C" + (lim.known ? "" : " (assumed)")
      : "· no limit";
    const now = Date.now();
    app.history.push({ t: now, state: e.state, tps: e.tokens_per_second, queued: e.queued,
                       temps: m.gpus.map((g) => g.temperature_c), limit: lim.c });
    while (app.history.length && app.history[0].t < now - WINDOW_MS) app.history.shift();
    renderGpus(m.gpus, lim.c);
    drawTemp();
    drawTps();
    $("#updated").textContent = "updated " + new Date(m.timestamp_ms).toLocaleTimeString();
    $("#updated").dataset.ts = String(m.timestamp_ms);
  }

  function renderGpus(gpus, limit) {
    const box = $("#gpus");
    box.replaceChildren();
    if (!gpus.length) {
      const p = document.createElement("p");
      p.className = "muted";
      p.textContent = "No NVIDIA GPU seen (NVML): running on the CPU.";
      box.appendChild(p);
      return;
    }
    for (const g of gpus) {
      const d = document.createElement("div");
      d.className = "gpu";
      d.dataset.gpu = String(g.index);
      d.dataset.temp = String(g.temperature_c);
      const row1 = document.createElement("div");
      row1.className = "row";
      const name = document.createElement("b");
      name.textContent = "GPU " + g.index + " · " + g.name;
      const temp = document.createElement("span");
      temp.className = "temp" + (limit > 0 && g.temperature_c >= limit ? " hot" : "");
      temp.textContent = g.temperature_c < 0 ? "? °C" : Math.round(g.temperature_c) + " °C";
      row1.append(name, temp);
      const vram = document.createElement("div");
      vram.className = "row";
      const vl = document.createElement("span");
      vl.textContent = "VRAM " + fmtBytes(g.memory_used_bytes) + " / " + fmtBytes(g.memory_total_bytes);
      const ul = document.createElement("span");
      ul.textContent = (g.utilization_pct < 0 ? "?" : Math.round(g.utilization_pct)) + " % util · " +
        (g.power_w < 0 ? "?" : fmt1(g.power_w)) + " W";
      vram.append(vl, ul);
      const bar = document.createElement("div");
      bar.className = "bar";
      const fill = document.createElement("i");
      const frac = g.memory_total_bytes > 0 ? g.memory_used_bytes / g.memory_total_bytes : 0;
      fill.style.width = Math.max(0, Math.min(100, frac * 100)).toFixed(1) + "%";
      bar.appendChild(fill);
      d.append(row1, vram, bar);
      box.appendChild(d);
    }
  }

  const GPU_COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];

  // A canvas set up for its CSS size at the device's pixel ratio.
  function canvasCtx(id) {
    const c = document.getElementById(id);
    if (!c.dataset.ratio) c.dataset.ratio = String(c.height / c.width);   // from the markup
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || c.width, h = w * Number(c.dataset.ratio);
    const cw = Math.round(w * dpr), ch = Math.round(h * dpr);
    if (c.width !== cw || c.height !== ch) { c.width = cw; c.height = ch; }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w, h };
  }

  function axes(ctx, w, h, lo, hi, unit, pad) {
    ctx.strokeStyle = "rgba(128,128,128,.25)";
    ctx.fillStyle = "rgba(128,128,128,.9)";
    ctx.font = "10px sans-serif";
    ctx.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const v = lo + (hi - lo) * k / 4, y = pad.t + (h - pad.t - pad.b) * (1 - k / 4);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
      ctx.fillText(Math.round(v) + unit, 2, y + 3);
    }
    ctx.fillText("-5 min", pad.l, h - 2);
    ctx.fillText("now", w - pad.r - 18, h - 2);
  }

  function xOf(t, now, w, pad) { return pad.l + (w - pad.l - pad.r) * (1 - (now - t) / WINDOW_MS); }

  function drawTemp() {
    const { ctx, w, h } = canvasCtx("chart-temp");
    const pad = { l: 34, r: 6, t: 6, b: 14 };
    const hist = app.history, now = Date.now();
    const limit = hist.length ? hist[hist.length - 1].limit : DEFAULT_TEMP_LIMIT;
    let hi = Math.max(limit > 0 ? limit + 7 : 60, 40), lo = 20;
    for (const s of hist) for (const t of s.temps) if (t >= 0) { hi = Math.max(hi, t + 5); lo = Math.min(lo, t - 5); }
    const yOf = (v) => pad.t + (h - pad.t - pad.b) * (1 - (v - lo) / (hi - lo));
    // Throttled stretches shaded, so the cause and effect read together.
    ctx.fillStyle = "rgba(180,83,9,.15)";
    for (let i = 0; i < hist.length; i++) {
      if (hist[i].state !== "throttled") continue;
      const x0 = xOf(hist[i].t, now, w, pad), x1 = i + 1 < hist.length ? xOf(hist[i + 1].t, now, w, pad) : w - pad.r;
      ctx.fillRect(x0, pad.t, Math.max(1, x1 - x0), h - pad.t - pad.b);
    }
    axes(ctx, w, h, lo, hi, "°", pad);
    if (limit > 0) {
      ctx.strokeStyle = "#b91c1c";
      ctx.setLineDash([5, 4]);
      ctx.beginPath(); ctx.moveTo(pad.l, yOf(limit)); ctx.lineTo(w - pad.r, yOf(limit)); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#b91c1c";
      ctx.fillText("limit " + limit + "°", w - pad.r - 52, yOf(limit) - 3);
    }
    const n = hist.reduce((a, s) => Math.max(a, s.temps.length), 0);
    const drawn = [];                 // each GPU's latest point, in CSS pixels
    app.tempChart = { limitY: limit > 0 ? yOf(limit) : null, latest: drawn };
    for (let g = 0; g < n; g++) {
      ctx.strokeStyle = GPU_COLORS[g % GPU_COLORS.length];
      ctx.fillStyle = ctx.strokeStyle;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false, lastX = 0, lastY = 0;
      for (const s of hist) {
        const t = s.temps[g];
        if (t === undefined || t < 0) { started = false; continue; }
        const x = xOf(s.t, now, w, pad), y = yOf(t);
        if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        started = true; lastX = x; lastY = y;
      }
      ctx.stroke();
      if (started) { ctx.beginPath(); ctx.arc(lastX, lastY, 3, 0, 2 * Math.PI); ctx.fill(); }
      drawn.push({ x: lastX, y: lastY, color: GPU_COLORS[g % GPU_COLORS.length] });
    }
    if (!n) { ctx.fillStyle = "rgba(128,128,128,.9)"; ctx.fillText("no GPU readings", w / 2 - 36, h / 2); }
  }

  function drawTps() {
    const { ctx, w, h } = canvasCtx("chart-tps");
    const pad = { l: 34, r: 6, t: 6, b: 14 };
    const hist = app.history, now = Date.now();
    let hi = 10;
    for (const s of hist) hi = Math.max(hi, s.tps * 1.1);
    axes(ctx, w, h, 0, hi, "", pad);
    const yOf = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / hi);
    const line = (key, color, scale) => {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      hist.forEach((s, i) => {
        const x = xOf(s.t, now, w, pad), y = yOf(s[key] * scale);
        if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      });
      ctx.stroke();
    };
    line("tps", "#2563eb", 1);
    let qmax = 1;
    for (const s of hist) qmax = Math.max(qmax, s.queued);
    line("queued", "#d97706", hi / qmax);
    ctx.fillStyle = "#2563eb"; ctx.fillText("tok/s", pad.l + 4, pad.t + 10);
    ctx.fillStyle = "#d97706"; ctx.fillText("queued (max " + qmax + ")", pad.l + 40, pad.t + 10);
  }

  // ------------------------------------------------------------- formatting

  function fmt1(x) { return typeof x === "number" && isFinite(x) ? (Math.round(x * 10) / 10).toString() : "-"; }
  function fmtMs(x) { return typeof x !== "number" ? "-" : x < 10 ? x.toFixed(2) + " ms" : x < 1000 ? Math.round(x) + " ms" : (x / 1000).toFixed(2) + " s"; }
  function fmtCount(n) { return n >= 1e9 ? (n / 1e9).toFixed(1) + "G" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(n); }
  function fmtBytes(b) { return b >= 2 ** 30 ? (b / 2 ** 30).toFixed(2) + " GiB" : (b / 2 ** 20).toFixed(0) + " MiB"; }

  // ------------------------------------------------------------------ start

  function start() {
    $("#new-session").onclick = () => addPane();
    $("#auth").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("#token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("#token").value = "";
      showAuth(false, "");
      app.authFailed = false;
      if (app.ws && app.ws.readyState === WebSocket.OPEN && !app.authed)
        send({ type: "AUTH", token, id: newId("a", { kind: "auth" }) });
      else connect();
    });
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      const p = app.active && app.active.run ? app.active : app.panes.find((x) => x.run);
      if (p) { e.preventDefault(); p.stop(); }
    });
    window.addEventListener("resize", () => { drawTemp(); drawTps(); });
    addPane();
    drawTemp();
    drawTps();
    connect();
    setInterval(() => { drawTemp(); drawTps(); }, 5000);   // keep the window rolling
  }

  // For tests and the curious: the renderer and the panes.
  window.IC = { renderMarkdown, app, addPane };
  start();
})();
