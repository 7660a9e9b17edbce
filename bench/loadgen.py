#!/usr/bin/python3
"""Load generator: N concurrent streaming clients against InferenceCenter
(WebSocket protocol, docs/protocol.md) or llama.cpp's llama-server (POST
/completion with SSE streaming).

Every client has its own session (ic) or its own request stream (llama),
sends R requests one after another with a fixed prompt of about P tokens
and asks for exactly G tokens (greedy, ignore_eos). All clients start
together. Per request it records the server's queue time (ic only), the
time to first token, every inter-token gap and the total time, all measured
here on the client; per run the end-to-end and steady-state aggregate
generated tokens/s and the failures.

Runs with Debian's /usr/bin/python3 and python3-websockets (10.4); nothing
else outside the standard library. bench/run imports it for its GGUF and
/proc readers.

    bench/loadgen.py --target ic --url ws://127.0.0.1:8765/ws --clients 4 \
        --prompt-tokens 128 --gen 64 --json-out /tmp/ic-n4.json
    bench/loadgen.py --target llama --url http://127.0.0.1:8080 --clients 4 \
        --prompt-tokens 128 --gen 64 --ban-byte-tokens MODEL.gguf

Sequential baseline: --clients 1 --requests-per-client N sends the same N
requests one after another. Shared system prompt: --system-tokens T (ic:
the session's `system`; llama: the prompt's prefix, cache_prompt on).
Mixed load: --long-prompt-tokens L gives client 0 a prompt of about L
tokens, --short-delay-ms D starts the others D ms later, and the summary's
"groups" gives the long and the short clients' figures apart.
--server-pid PID adds the server's RSS before the clients connect and
with every session still open after its last turn, and the CPU time
(per thread) it used during the timed run.

Prompts: simple words repeated, preceded by a tag unique to the run, the
client and the request, so that no server can reuse another request's KV
cache (the shared system text comes before the tag, so it can be shared).
Its length is calibrated against the server's own tokenizer before the
timed run (ic: a one-token INFER read back from END stats.prompt_tokens;
llama: POST /tokenize), so both servers get the same text on the same
model; --prompt-words skips that. System and long prompts are sized from
one more count at 4x the prompt's words (the tokens per word and the tag's
tokens), not calibrated themselves, which would be slow on a big model.
"""

import argparse
import asyncio
import json
import os
import struct
import sys
import time
import urllib.parse

import websockets

WORDS = ("the cat sat on a mat and the dog ran to the big red house by the "
         "old tree where a bird sang every day").split()


# ---------------------------------------------------------------- prompts

def words_text(n_words, offset=0):
    """n_words simple words, starting at WORDS[offset]; begins with a space."""
    return "".join(" " + WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def system_text(n_words):
    """The shared system prompt of n_words words (no trailing separator)."""
    return ("You are a storyteller." + words_text(n_words - 4)) if n_words > 4 else \
        words_text(n_words).lstrip()


def request_prompt(body_words, tag):
    """One request's prompt text after the system part: a unique tag, then words."""
    return " Story %s:%s" % (tag, words_text(body_words, 3))


# ---------------------------------------------------------------- GGUF

GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
               7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path):
    """Every metadata key of a GGUF file -> value (strings decoded, arrays as lists)."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def rd_str():
            return f.read(rd("<Q"))

        def rd_value(vtype):
            if vtype == 8:
                return rd_str().decode("utf-8", "replace")
            if vtype == 9:
                etype, n = rd("<I"), rd("<Q")
                if etype in GGUF_SCALAR:
                    size = struct.calcsize(GGUF_SCALAR[etype])
                    data = f.read(size * n)
                    return list(struct.unpack("<%d%s" % (n, GGUF_SCALAR[etype][1]), data))
                return [rd_value(etype) for _ in range(n)]
            return rd(GGUF_SCALAR[vtype])

        if f.read(4) != b"GGUF":
            raise ValueError("%s: not a GGUF file" % path)
        rd("<I")
        rd("<Q")
        n_kv = rd("<Q")
        meta = {}
        for _ in range(n_kv):
            key = rd_str().decode()
            meta[key] = rd_value(rd("<I"))
        return meta


def gguf_byte_tokens(path):
    """Token ids whose tokenizer.ggml.token_type is BYTE (6) in a GGUF file."""
    types = gguf_metadata(path).get("tokenizer.ggml.token_type", [])
    return [i for i, t in enumerate(types) if t == 6]


def gguf_kv_shape(path):
    """The model's KV shape: n_layer, n_embd_k_gqa, n_embd_v_gqa, n_ctx_train,
    and kv_bytes_per_token for an F16 cache (K and V, every layer)."""
    meta = gguf_metadata(path)
    arch = meta["general.architecture"]

    def key(name, default=None):
        return meta.get("%s.%s" % (arch, name), default)

    n_layer, n_embd = key("block_count"), key("embedding_length")
    n_head = key("attention.head_count")
    n_head_kv = key("attention.head_count_kv", n_head)
    if isinstance(n_head_kv, list):  # per-layer counts: take the largest
        n_head_kv = max(n_head_kv)
    k_len = key("attention.key_length", n_embd // n_head)
    v_len = key("attention.value_length", n_embd // n_head)
    k, v = k_len * n_head_kv, v_len * n_head_kv
    return {"arch": arch, "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head,
            "n_head_kv": n_head_kv, "n_embd_k_gqa": k, "n_embd_v_gqa": v,
            "n_ctx_train": key("context_length"), "kv_bytes_per_token": n_layer * (k + v) * 2}


# ---------------------------------------------------------------- /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_ticks(stat_path):
    """utime + stime clock ticks from a /proc/.../stat file."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def proc_cpu(pid):
    """Process CPU ticks and {tid: [comm, ticks]} of its live threads."""
    threads = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
            threads[int(tid)] = [comm, proc_ticks("/proc/%d/task/%s/stat" % (pid, tid))]
        except OSError:  # the thread ended meanwhile
            pass
    return proc_ticks("/proc/%d/stat" % pid), threads


def proc_rss_kb(pid):
    """VmRSS of a process in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def cpu_delta(before, after):
    """CPU seconds between two proc_cpu() samples, in total and per thread."""
    threads = []
    for tid, (comm, ticks) in sorted(after[1].items()):
        t0 = before[1].get(tid, [comm, 0])[1]
        threads.append({"tid": tid, "comm": comm, "cpu_s": (ticks - t0) / CLK_TCK})
    return {"cpu_s": (after[0] - before[0]) / CLK_TCK, "threads": threads}


# ---------------------------------------------------------------- statistics

def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of values; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(1, -(-len(s) * q // 100))  # ceil(n * q / 100), at least 1
    return s[int(k) - 1]


def new_record(client, index):
    return {"client": client, "request": index, "ok": False, "error": None,
            "prompt_tokens": None, "queue_ms": None, "ttft_ms": None, "total_ms": None,
            "tokens": 0, "itl_ms": [], "t_send": None, "t_first": None, "t_last": None,
            "server": None}


def token_arrived(rec, now):
    if rec["t_first"] is None:
        rec["t_first"] = now
    else:
        rec["itl_ms"].append((now - rec["t_last"]) * 1e3)
    rec["t_last"] = now
    rec["tokens"] += 1


def finish_record(rec, gen, now):
    rec["total_ms"] = (now - rec["t_send"]) * 1e3
    if rec["t_first"] is not None:
        rec["ttft_ms"] = (rec["t_first"] - rec["t_send"]) * 1e3
    if rec["error"] is None and rec["tokens"] != gen:
        rec["error"] = "incomplete: %d of %d tokens" % (rec["tokens"], gen)
    rec["ok"] = rec["error"] is None


def fail_record(rec, gen, error):
    """End rec as failed with error (its send time is now if it was never sent)."""
    now = time.perf_counter()
    if rec["t_send"] is None:
        rec["t_send"] = now
    rec["error"] = error
    finish_record(rec, gen, now)


# ---------------------------------------------------------------- InferenceCenter

class IcConn:
    """One WebSocket connection to InferenceCenter."""

    def __init__(self, url, token):
        self.url, self.token, self.ws, self.next_id = url, token, None, 0

    async def open(self):
        self.ws = await websockets.connect(self.url, compression=None, ping_interval=None,
                                           max_size=None, close_timeout=1)
        hello = json.loads(await self.ws.recv())
        if hello.get("type") != "HELLO":
            raise RuntimeError("expected HELLO, got %r" % hello)
        if self.token is not None:
            reply = await self.call({"type": "AUTH", "token": self.token})
            if reply["type"] != "AUTH_SUCCESS":
                raise RuntimeError("AUTH: %r" % reply)

    async def close(self):
        if self.ws is not None:
            try:
                await self.ws.close()
            except Exception:
                pass

    async def call(self, msg):
        """Send msg with a fresh id and return the reply that carries that id."""
        self.next_id += 1
        msg["id"] = self.next_id
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg["id"]:
                return reply

    async def create_session(self, system):
        msg = {"type": "CREATE_SESSION"}
        if system:
            msg["system"] = system
        reply = await self.call(msg)
        if reply["type"] != "SESSION_CREATED":
            raise RuntimeError("CREATE_SESSION: %r" % reply)
        return reply["session_id"]

    async def close_session(self, sid):
        await self.call({"type": "CLOSE_SESSION", "session_id": sid})

    async def infer(self, sid, prompt, gen, rec):
        """Run one INFER, filling rec; rec['t_send'] is set just before sending."""
        self.next_id += 1
        rid = self.next_id
        msg = json.dumps({"type": "INFER", "session_id": sid, "prompt": prompt, "raw": True,
                          "id": rid, "params": {"temperature": 0, "max_tokens": gen,
                                                "ignore_eos": True}})
        rec["t_send"] = time.perf_counter()
        await self.ws.send(msg)
        while True:
            raw = await self.ws.recv()
            now = time.perf_counter()
            m = json.loads(raw)
            if m.get("id") != rid:
                continue
            kind = m.get("type")
            if kind == "TOKEN":
                token_arrived(rec, now)
            elif kind == "END":
                stats = m.get("stats", {})
                rec["queue_ms"] = stats.get("queue_ms")
                rec["prompt_tokens"] = stats.get("prompt_tokens")
                rec["server"] = stats
                if m.get("reason") != "length":
                    rec["error"] = "END reason %s" % m.get("reason")
                return now
            else:
                rec["error"] = "%s %s: %s" % (kind, m.get("code"), m.get("message"))
                return now


class IcClient:
    """One client's session on InferenceCenter: a fresh session per request,
    so every request does the same work (the last one stays open until
    close(), for the open-sessions RSS sample)."""

    def __init__(self, args, system):
        self.args, self.system = args, system
        self.conn, self.sid = IcConn(args.url, args.token), None

    async def setup(self):
        await self.conn.open()
        self.sid = await self.conn.create_session(self.system)

    async def request(self, index, prompt, gen, rec):
        if index > 0:
            await self.conn.close_session(self.sid)
            self.sid = await self.conn.create_session(self.system)
        return await self.conn.infer(self.sid, prompt, gen, rec)

    async def close(self):
        await self.conn.close()


async def ic_count_tokens(args, text):
    """Prompt tokens of text as a raw first turn (one-token INFER)."""
    client = IcClient(args, None)
    try:
        await client.setup()
        rec = new_record(-1, 0)
        await client.request(0, text, 1, rec)
        if rec["error"] or rec["prompt_tokens"] is None:
            raise RuntimeError("calibration INFER failed: %s" % rec["error"])
        await client.conn.close_session(client.sid)
        return rec["prompt_tokens"]
    finally:
        await client.close()


# ---------------------------------------------------------------- llama-server

class HttpConn:
    """A minimal HTTP/1.1 client over asyncio streams, enough for llama-server."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def request_bytes(self, method, path, body):
        data = json.dumps(body).encode()
        head = ("%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                "Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n"
                % (method, path, self.host, self.port, len(data)))
        return head.encode() + data

    async def read_head(self):
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before the status line")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    async def body_chunks(self, headers):
        """Yield the body as it arrives (chunked, sized or until close)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    return
                chunk = await self.reader.readexactly(size)
                await self.reader.readline()
                yield chunk
        elif "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
        else:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    return
                yield chunk

    async def sse_data(self, headers):
        """Yield (arrival time, payload bytes) of each `data:` line of an
        event stream as it arrives."""
        pending = b""
        async for chunk in self.body_chunks(headers):
            now = time.perf_counter()
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                line = line.strip()
                if line.startswith(b"data:"):
                    yield now, line[5:].strip()

    async def post_json(self, path, body):
        self.writer.write(self.request_bytes("POST", path, body))
        status, headers = await self.read_head()
        data = b"".join([c async for c in self.body_chunks(headers)])
        return status, json.loads(data) if data else None


def llama_body(prompt, gen, stream, cache_prompt, bias):
    """The /completion request: greedy, exactly gen tokens (ignore_eos)."""
    body = {"prompt": prompt, "n_predict": gen, "temperature": 0, "stream": stream,
            "ignore_eos": True, "cache_prompt": cache_prompt}
    if bias:
        body["logit_bias"] = bias
    return body


async def llama_post(args, path, body):
    """One POST on a fresh connection; returns the decoded reply or raises."""
    conn = HttpConn(args.url)
    await conn.open()
    try:
        status, reply = await conn.post_json(path, body)
        if status != 200:
            raise RuntimeError("%s: HTTP %d %r" % (path, status, reply))
        return reply
    finally:
        conn.close()


async def llama_count_tokens(args, text):
    reply = await llama_post(args, "/tokenize", {"content": text, "add_special": True})
    return len(reply["tokens"])


async def llama_stream(conn, body, rec):
    """POST /completion on an open connection and read its SSE stream into rec."""
    req = conn.request_bytes("POST", "/completion", body)
    rec["t_send"] = time.perf_counter()
    conn.writer.write(req)
    status, headers = await conn.read_head()
    if status != 200:
        text = b"".join([c async for c in conn.body_chunks(headers)])
        rec["error"] = "HTTP %d: %s" % (status, text[:200].decode("utf-8", "replace"))
        return time.perf_counter()
    async for now, data in conn.sse_data(headers):
        ev = json.loads(data)
        if "error" in ev:
            rec["error"] = "error event: %s" % json.dumps(ev["error"])[:200]
        elif ev.get("stop"):
            timings = ev.get("timings", {})
            rec["prompt_tokens"] = timings.get("prompt_n")
            rec["server"] = timings
            return now
        elif "content" in ev:
            token_arrived(rec, now)
    if rec["error"] is None:
        rec["error"] = "stream ended without stop"
    return time.perf_counter()


class LlamaClient:
    """One client's request stream on llama-server: one connection per
    request, like a fresh HTTP client; the system text is the prompt's
    prefix, which cache_prompt lets a slot keep."""

    def __init__(self, args, system, bias):
        self.args, self.system, self.bias = args, system or "", bias
        self.conn = HttpConn(args.url)

    async def setup(self):
        await self.conn.open()

    async def request(self, index, prompt, gen, rec):
        if index > 0:
            self.conn.close()
            self.conn = HttpConn(self.args.url)
            await self.conn.open()
        body = llama_body(self.system + prompt, gen, True, True, self.bias)
        return await llama_stream(self.conn, body, rec)

    async def close(self):
        self.conn.close()


# ---------------------------------------------------------------- run

class StartGate:
    """Everyone connects (and creates a session) first; the last one to
    arrive opens the gate and calls on_open (which takes the start time)."""

    def __init__(self, n, on_open):
        self.waiting, self.on_open, self.opened = n, on_open, asyncio.Event()

    async def wait(self):
        self.waiting -= 1
        if self.waiting == 0:
            self.on_open()
            self.opened.set()
        await self.opened.wait()


async def client_task(args, client_id, client, prompts, delay_s, gate, done, records):
    """Set up, wait for the gate, run the prompts in order, report done,
    then hold the session until everyone is done (see --server-pid)."""
    setup_error = None
    try:
        await asyncio.wait_for(client.setup(), args.request_timeout)
    except Exception as e:  # the client never started: every request fails
        setup_error = "setup: %s: %s" % (type(e).__name__, e)
    await gate.wait()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    for i, prompt in enumerate(prompts):
        rec = new_record(client_id, i)
        records.append(rec)
        if setup_error is not None:
            fail_record(rec, args.gen, setup_error)
            continue
        try:
            now = await asyncio.wait_for(client.request(i, prompt, args.gen, rec),
                                         args.request_timeout)
            finish_record(rec, args.gen, now)
        except Exception as e:
            fail_record(rec, args.gen, "%s: %s" % (type(e).__name__, e))
    await done.wait()
    await client.close()


class DoneLatch:
    """Counts clients down; the last one takes the end samples and releases all."""

    def __init__(self, n, on_done):
        self.left, self.on_done, self.released = n, on_done, asyncio.Event()

    async def wait(self):
        self.left -= 1
        if self.left == 0:
            self.on_done()
            self.released.set()
        await self.released.wait()


async def calibrate(args, count):
    """Words of body text so that tag + body come to about --prompt-tokens tokens."""
    probe = request_prompt(args.prompt_tokens, "0-0-calib")
    n = await count(args, probe)
    words = max(1, round(args.prompt_tokens * args.prompt_tokens / n))
    for _ in range(4):  # converge on the real tokenizer (± a token or two)
        n = await count(args, request_prompt(words, "0-0-calib"))
        if abs(n - args.prompt_tokens) <= 1:
            break
        words = max(1, words + round((args.prompt_tokens - n) * words / n))
    return words, n


def latency_stats(records):
    """TTFT, inter-token and queue percentiles over the successful records."""
    ok = [r for r in records if r["ok"]]
    out = {}
    for name, vals in (("ttft_ms", [r["ttft_ms"] for r in ok]),
                       ("itl_ms", [g for r in ok for g in r["itl_ms"]]),
                       ("queue_ms", [r["queue_ms"] for r in ok if r["queue_ms"] is not None])):
        out[name] = {"p50": percentile(vals, 50), "p95": percentile(vals, 95),
                     "p99": percentile(vals, 99), "max": max(vals) if vals else None,
                     "n": len(vals)}
    return out


def steady_state(records, n_clients):
    """Tokens/s from the last client's first token to the first client's
    last token, counting tokens whose arrival falls in that window."""
    firsts, lasts = {}, {}
    for r in records:
        if r["t_first"] is None:
            continue
        c = r["client"]
        firsts[c] = min(firsts.get(c, r["t_first"]), r["t_first"])
        lasts[c] = max(lasts.get(c, r["t_last"]), r["t_last"])
    if len(firsts) != n_clients:
        return None
    w0, w1 = max(firsts.values()), min(lasts.values())
    if w1 <= w0:
        return None
    n_in = 0
    for r in records:
        if r["t_first"] is None:
            continue
        t = r["t_first"]
        times = [t]
        for g in r["itl_ms"]:
            t += g / 1e3
            times.append(t)
        n_in += sum(1 for x in times if w0 < x <= w1)
    return {"tokens": n_in, "seconds": w1 - w0, "tok_s": n_in / (w1 - w0)}


def summarize(args, records, t_start, t_end):
    ok = [r for r in records if r["ok"]]
    total_tokens = sum(r["tokens"] for r in records)
    wall = t_end - t_start
    summary = {"clients": args.clients, "requests": len(records),
               "failures": len(records) - len(ok), "generated_tokens": total_tokens,
               "seconds": wall, "agg_tok_s": total_tokens / wall if wall > 0 else None,
               "steady": steady_state(records, args.clients), **latency_stats(records)}
    if args.long_prompt_tokens:
        summary["groups"] = {
            "long": latency_stats([r for r in records if r["client"] == 0]),
            "short": latency_stats([r for r in records if r["client"] != 0])}
    return summary


async def prepare(args):
    """Calibrate (or take --prompt-words), warm the server up; returns the
    prompt words, the calibrated token count and the word counts of the
    system and long prompts."""
    count = ic_count_tokens if args.target == "ic" else llama_count_tokens
    if args.prompt_words:
        words, calib_tokens = args.prompt_words, None
    else:
        words, calib_tokens = await calibrate(args, count)
    # One untimed one-token request on each server (ic's counting INFER is one).
    warm = request_prompt(words, "warm-up")
    if args.target == "llama":
        await llama_post(args, "/completion", llama_body(warm, 1, False, False, None))
    else:
        await ic_count_tokens(args, warm)
    ref = calib_tokens or args.prompt_tokens
    system_words = long_words = 0
    if (args.system_tokens and not args.system_words) or args.long_prompt_tokens:
        # tokens(words) = tag + slope * words: a second point at 4x the words
        # gives the slope, so long texts need no slow calibration of their own.
        n4 = await count(args, request_prompt(4 * words, "0-0-calib"))
        slope = max(1e-3, (n4 - ref) / (3 * words))
        tag = ref - slope * words
        if args.system_tokens:
            system_words = max(1, round(args.system_tokens / slope))
        if args.long_prompt_tokens:
            long_words = max(1, round((args.long_prompt_tokens - tag) / slope))
    system_words = args.system_words or system_words
    return words, calib_tokens, system_words, long_words


async def run(args):
    bias = None
    if args.target == "llama" and args.ban_byte_tokens:
        bias = [[t, False] for t in gguf_byte_tokens(args.ban_byte_tokens)]
    words, calib_tokens, system_words, long_words = await prepare(args)
    system = system_text(system_words) if system_words else None
    records, marks = [], {}
    pid = args.server_pid
    if pid:
        marks["rss_kb_idle"] = proc_rss_kb(pid)

    def on_open():
        marks["t"] = time.perf_counter()
        if pid:
            marks["cpu0"] = proc_cpu(pid)

    def on_done():
        if pid:
            marks["cpu1"] = proc_cpu(pid)
            marks["rss_kb_open"] = proc_rss_kb(pid)

    gate, done = StartGate(args.clients, on_open), DoneLatch(args.clients, on_done)
    tasks = []
    for c in range(args.clients):
        w = long_words if (c == 0 and long_words) else words
        # A random tag first: no KV prefix beyond " Story " matches another request.
        prompts = [request_prompt(w, "%s-%d-%d" % (os.urandom(3).hex(), c, i))
                   for i in range(args.requests_per_client)]
        client = IcClient(args, system) if args.target == "ic" else \
            LlamaClient(args, system, bias)
        delay = args.short_delay_ms / 1e3 if (c > 0 and long_words) else 0.0
        tasks.append(client_task(args, c, client, prompts, delay, gate, done, records))
    await asyncio.gather(*tasks)
    t_end = max(r["t_send"] + r["total_ms"] / 1e3 for r in records)
    summary = summarize(args, records, marks["t"], t_end)
    summary.update({"target": args.target, "url": args.url, "prompt_tokens": args.prompt_tokens,
                    "prompt_tokens_measured": calib_tokens, "prompt_words": words,
                    "gen": args.gen, "requests_per_client": args.requests_per_client,
                    "system_words": system_words, "system_tokens": args.system_tokens,
                    "long_prompt_words": long_words,
                    "long_prompt_tokens": args.long_prompt_tokens,
                    "short_delay_ms": args.short_delay_ms if long_words else 0,
                    "byte_tokens_banned": len(bias) if bias else 0})
    if pid:
        summary["server"] = {"pid": pid, "rss_kb_idle": marks["rss_kb_idle"],
                             "rss_kb_open": marks.get("rss_kb_open"),
                             **cpu_delta(marks["cpu0"], marks["cpu1"])}
    for r in records:  # times relative to the start, for plots
        for k in ("t_send", "t_first", "t_last"):
            if r[k] is not None:
                r[k] = r[k] - marks["t"]
    return summary, records


def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("ic", "llama"), required=True)
    ap.add_argument("--url", help="ic: ws://HOST:PORT/ws (default ws://127.0.0.1:8765/ws); "
                    "llama: http://HOST:PORT (default http://127.0.0.1:8080)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients N")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length P, about")
    ap.add_argument("--gen", type=int, default=64, help="tokens to generate G")
    ap.add_argument("--prompt-words", type=int, default=0,
                    help="use this many prompt words (taken as --prompt-tokens tokens) "
                    "and skip the calibration")
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--system-words", type=int, default=0,
                    help="a shared system prompt of W words before every prompt")
    ap.add_argument("--system-tokens", type=int, default=0,
                    help="a shared system prompt of about T tokens (scaled from the "
                    "calibration; --system-words wins)")
    ap.add_argument("--long-prompt-tokens", type=int, default=0,
                    help="client 0 sends a prompt of about L tokens (mixed load)")
    ap.add_argument("--short-delay-ms", type=float, default=0,
                    help="with --long-prompt-tokens: the other clients start this late")
    ap.add_argument("--request-timeout", type=float, default=600,
                    help="seconds before one request (or a client's setup) counts as failed")
    ap.add_argument("--server-pid", type=int, default=0,
                    help="sample this server process's RSS and CPU time (/proc)")
    ap.add_argument("--token", help="ic: API token to send in AUTH")
    ap.add_argument("--ban-byte-tokens", metavar="GGUF",
                    help="llama: ban the byte tokens of this model with logit_bias "
                    "(llama-server answers 500 on invalid UTF-8)")
    ap.add_argument("--json-out", help="write the summary and every request here")
    ap.add_argument("--label", default="", help="free text copied into the JSON")
    args = ap.parse_args()
    if args.url is None:
        args.url = "ws://127.0.0.1:8765/ws" if args.target == "ic" else "http://127.0.0.1:8080"
    if args.clients < 1 or args.gen < 1 or args.requests_per_client < 1:
        ap.error("--clients, --gen and --requests-per-client must be at least 1")
    if args.long_prompt_tokens and args.clients < 2:
        ap.error("--long-prompt-tokens needs at least 2 clients")
    return args


def main():
    args = parse_args()
    summary, records = asyncio.run(run(args))
    summary["label"] = args.label
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"summary": summary, "requests": records}, f, indent=1)
    s = summary
    print("%s N=%d P=%d G=%d agg %s tok/s steady %s tok/s TTFT p50/p95 %s/%s ms "
          "ITL p50/p95 %s/%s ms failures %d/%d"
          % (s["target"], s["clients"], s["prompt_tokens_measured"] or s["prompt_tokens"], s["gen"],
             fmt(s["agg_tok_s"]), fmt(s["steady"] and s["steady"]["tok_s"]),
             fmt(s["ttft_ms"]["p50"]), fmt(s["ttft_ms"]["p95"]),
             fmt(s["itl_ms"]["p50"], "%.2f"), fmt(s["itl_ms"]["p95"], "%.2f"),
             s["failures"], s["requests"]))
    for name, g in s.get("groups", {}).items():
        print("  %s clients: TTFT p50/p95 %s/%s ms" % (name, fmt(g["ttft_ms"]["p50"]),
                                                      fmt(g["ttft_ms"]["p95"])))
    for r in records:
        if r["error"]:
            print("  client %d request %d: %s" % (r["client"], r["request"], r["error"]),
                  file=sys.stderr)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
