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
else outside the standard library.

    bench/loadgen.py --target ic --url ws://127.0.0.1:8765/ws --clients 4 \
        --prompt-tokens 128 --gen 64 --json-out /tmp/ic-n4.json
    bench/loadgen.py --target llama --url http://127.0.0.1:8080 --clients 4 \
        --prompt-tokens 128 --gen 64 --ban-byte-tokens MODEL.gguf

Prompts: simple words repeated, preceded by a tag unique to the run, the
client and the request, so that no server can reuse another request's KV
cache (the shared --system-words text comes before the tag, so it can be
shared). Its length is calibrated against the server's own tokenizer before
the timed run (ic: a one-token INFER read back from END stats.prompt_tokens;
llama: POST /tokenize), so both servers get the same text on the same model.
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
    """The shared system prompt of --system-words (no trailing separator)."""
    return ("You are a storyteller." + words_text(n_words - 4)) if n_words > 4 else \
        words_text(n_words).lstrip()


def request_prompt(body_words, tag):
    """One request's prompt text after the system part: a unique tag, then words."""
    return " Story %s:%s" % (tag, words_text(body_words, 3))


# ---------------------------------------------------------------- GGUF

GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
               7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_byte_tokens(path):
    """Token ids whose tokenizer.ggml.token_type is BYTE (6) in a GGUF file."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def rd_str():
            return f.read(rd("<Q"))

        def rd_value(vtype):
            if vtype == 8:
                return rd_str()
            if vtype == 9:
                etype, n = rd("<I"), rd("<Q")
                if etype in GGUF_SCALAR and etype != 8:
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
        for _ in range(n_kv):
            key = rd_str().decode()
            value = rd_value(rd("<I"))
            if key == "tokenizer.ggml.token_type":
                return [i for i, t in enumerate(value) if t == 6]
    return []


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


async def ic_count_tokens(args, text):
    """Prompt tokens of text as a raw first turn (one-token INFER)."""
    conn = IcConn(args.url, args.token)
    await conn.open()
    try:
        sid = await conn.create_session(None)
        rec = new_record(-1, 0)
        await conn.infer(sid, text, 1, rec)
        if rec["error"] or rec["prompt_tokens"] is None:
            raise RuntimeError("calibration INFER failed: %s" % rec["error"])
        await conn.close_session(sid)
        return rec["prompt_tokens"]
    finally:
        await conn.ws.close()


async def ic_client(args, client, system, prompts, barrier, records):
    conn = IcConn(args.url, args.token)
    try:
        await conn.open()
        sid = await conn.create_session(system)
    except Exception as e:  # the client never started: every request fails
        await barrier.wait()
        for i in range(len(prompts)):
            rec = new_record(client, i)
            rec["error"] = "setup: %s" % e
            rec["t_send"] = time.perf_counter()
            finish_record(rec, args.gen, rec["t_send"])
            records.append(rec)
        return
    await barrier.wait()
    for i, prompt in enumerate(prompts):
        rec = new_record(client, i)
        records.append(rec)
        try:
            if i > 0:  # a fresh session per request, so every request does the same work
                await conn.close_session(sid)
                sid = await conn.create_session(system)
            now = await conn.infer(sid, prompt, args.gen, rec)
        except Exception as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            now = time.perf_counter()
            if rec["t_send"] is None:
                rec["t_send"] = now
        finish_record(rec, args.gen, now)
    try:
        await conn.ws.close()
    except Exception:
        pass


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

    async def post_json(self, path, body):
        self.writer.write(self.request_bytes("POST", path, body))
        status, headers = await self.read_head()
        data = b"".join([c async for c in self.body_chunks(headers)])
        return status, json.loads(data) if data else None


async def llama_count_tokens(args, text):
    conn = HttpConn(args.url)
    await conn.open()
    try:
        status, reply = await conn.post_json("/tokenize", {"content": text,
                                                           "add_special": True})
        if status != 200:
            raise RuntimeError("/tokenize: HTTP %d %r" % (status, reply))
        return len(reply["tokens"])
    finally:
        conn.close()


async def llama_stream(conn, body, gen, rec):
    """POST /completion on an open connection and read its SSE stream into rec."""
    req = conn.request_bytes("POST", "/completion", body)
    rec["t_send"] = time.perf_counter()
    conn.writer.write(req)
    status, headers = await conn.read_head()
    if status != 200:
        text = b"".join([c async for c in conn.body_chunks(headers)])
        rec["error"] = "HTTP %d: %s" % (status, text[:200].decode("utf-8", "replace"))
        return time.perf_counter()
    pending, done = b"", False
    async for chunk in conn.body_chunks(headers):
        now = time.perf_counter()
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            ev = json.loads(line[5:])
            if "error" in ev:
                rec["error"] = "error event: %s" % json.dumps(ev["error"])[:200]
            elif ev.get("stop"):
                timings = ev.get("timings", {})
                rec["prompt_tokens"] = timings.get("prompt_n")
                rec["server"] = timings
                done = True
            elif "content" in ev:
                token_arrived(rec, now)
        if done:
            return now
    if rec["error"] is None:
        rec["error"] = "stream ended without stop"
    return time.perf_counter()


async def llama_warmup(args, text):
    """One short completion, so llama-server is as warm as ic after calibration."""
    conn = HttpConn(args.url)
    await conn.open()
    try:
        status, reply = await conn.post_json("/completion", {
            "prompt": text, "n_predict": 1, "temperature": 0, "cache_prompt": False})
        if status != 200:
            raise RuntimeError("warm-up /completion: HTTP %d %r" % (status, reply))
    finally:
        conn.close()


async def llama_client(args, client, system, prompts, barrier, records, bias):
    conn = HttpConn(args.url)
    setup_error = None
    try:
        await conn.open()
    except Exception as e:
        setup_error = e
    await barrier.wait()
    for i, prompt in enumerate(prompts):
        rec = new_record(client, i)
        records.append(rec)
        if setup_error is not None:
            rec["error"] = "setup: %s" % setup_error
            rec["t_send"] = time.perf_counter()
            finish_record(rec, args.gen, rec["t_send"])
            continue
        body = {"prompt": (system or "") + prompt, "n_predict": args.gen, "temperature": 0,
                "stream": True, "ignore_eos": True, "cache_prompt": True}
        if bias:
            body["logit_bias"] = bias
        try:
            if i > 0:  # one connection per request, like a fresh HTTP client
                conn.close()
                conn = HttpConn(args.url)
                await conn.open()
            now = await llama_stream(conn, body, args.gen, rec)
        except Exception as e:
            rec["error"] = "%s: %s" % (type(e).__name__, e)
            now = time.perf_counter()
            if rec["t_send"] is None:
                rec["t_send"] = now
        finish_record(rec, args.gen, now)
    conn.close()


# ---------------------------------------------------------------- run

async def calibrate(args, count):
    """Words of body text so that tag + body come to about --prompt-tokens tokens."""
    probe = request_prompt(args.prompt_tokens, "0-0-calib")
    n = await count(args, probe)
    words = max(1, round(args.prompt_tokens * args.prompt_tokens / n))
    for _ in range(4):  # converge on the real tokenizer (± a token or two)
        n = await count(args, request_prompt(words, "0-0-calib"))
        if n == args.prompt_tokens or abs(n - args.prompt_tokens) <= 1:
            break
        words = max(1, words + round((args.prompt_tokens - n) * words / n))
    return words, n


def summarize(args, records, t_start, t_end):
    ok = [r for r in records if r["ok"]]
    ttft = [r["ttft_ms"] for r in ok]
    itl = [g for r in ok for g in r["itl_ms"]]
    queue = [r["queue_ms"] for r in ok if r["queue_ms"] is not None]
    total_tokens = sum(r["tokens"] for r in records)
    wall = t_end - t_start
    # Steady state: from the last client's first token to the first client's
    # last token, counting tokens whose arrival falls in that window.
    steady = None
    firsts, lasts = {}, {}
    for r in records:
        if r["t_first"] is None:
            continue
        c = r["client"]
        firsts[c] = min(firsts.get(c, r["t_first"]), r["t_first"])
        lasts[c] = max(lasts.get(c, r["t_last"]), r["t_last"])
    if len(firsts) == args.clients:
        w0, w1 = max(firsts.values()), min(lasts.values())
        if w1 > w0:
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
            steady = {"tokens": n_in, "seconds": w1 - w0, "tok_s": n_in / (w1 - w0)}
    pct = {}
    for name, vals in (("ttft_ms", ttft), ("itl_ms", itl), ("queue_ms", queue)):
        pct[name] = {"p50": percentile(vals, 50), "p95": percentile(vals, 95),
                     "p99": percentile(vals, 99), "max": max(vals) if vals else None,
                     "n": len(vals)}
    return {"clients": args.clients, "requests": len(records),
            "failures": len(records) - len(ok), "generated_tokens": total_tokens,
            "seconds": wall, "agg_tok_s": total_tokens / wall if wall > 0 else None,
            "steady": steady, **pct}


async def run(args):
    bias = None
    if args.target == "llama" and args.ban_byte_tokens:
        bias = [[t, False] for t in gguf_byte_tokens(args.ban_byte_tokens)]
    count = ic_count_tokens if args.target == "ic" else llama_count_tokens
    if args.prompt_words:
        words, calib_tokens = args.prompt_words, None
    else:
        words, calib_tokens = await calibrate(args, count)
    # One untimed one-token request on each server (ic's counting INFER is one).
    warm = request_prompt(words, "warm-up")
    if args.target == "llama":
        await llama_warmup(args, warm)
    else:
        await ic_count_tokens(args, warm)
    system = system_text(args.system_words) if args.system_words else None
    nonce = os.urandom(3).hex()  # no KV prefix beyond " Story " matches an earlier run
    records = []
    # Everyone connects (and creates a session) first; the last one to reach
    # the barrier opens it and takes the start time.
    start = {}
    ready = asyncio.Event()
    waiting = [args.clients]

    class Barrier:
        async def wait(self):
            waiting[0] -= 1
            if waiting[0] == 0:
                start["t"] = time.perf_counter()
                ready.set()
            await ready.wait()

    barrier = Barrier()
    tasks = []
    for c in range(args.clients):
        prompts = [request_prompt(words, "%s-%d-%d" % (nonce, c, i))
                   for i in range(args.requests_per_client)]
        if args.target == "ic":
            tasks.append(ic_client(args, c, system, prompts, barrier, records))
        else:
            tasks.append(llama_client(args, c, system, prompts, barrier, records, bias))
    await asyncio.gather(*tasks)
    t_end = max(r["t_send"] + r["total_ms"] / 1e3 for r in records)
    summary = summarize(args, records, start["t"], t_end)
    summary.update({"target": args.target, "url": args.url, "prompt_tokens": args.prompt_tokens,
                    "prompt_tokens_measured": calib_tokens, "prompt_words": words,
                    "gen": args.gen, "requests_per_client": args.requests_per_client,
                    "system_words": args.system_words,
                    "byte_tokens_banned": len(bias) if bias else 0})
    for r in records:  # times relative to the start, for plots
        for k in ("t_send", "t_first", "t_last"):
            if r[k] is not None:
                r[k] = r[k] - start["t"]
    return summary, records


def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("ic", "llama"), required=True)
    ap.add_argument("--url", help="ic: ws://HOST:PORT/ws (default ws://127.0.0.1:8765/ws); "
                    "llama: http://HOST:PORT (default http://127.0.0.1:8080)")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients N")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="prompt length P, about")
    ap.add_argument("--gen", type=int, default=64, help="tokens to generate G")
    ap.add_argument("--prompt-words", type=int, default=0,
                    help="use this many prompt words and skip the calibration")
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--system-words", type=int, default=0,
                    help="a shared system prompt of W words before every prompt")
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
    for r in records:
        if r["error"]:
            print("  client %d request %d: %s" % (r["client"], r["request"], r["error"]),
                  file=sys.stderr)
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
