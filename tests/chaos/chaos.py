#!/usr/bin/python3
"""chaos.py - a seeded, randomised protocol chaos run against the real
`inferencecenter serve` binary on 127.0.0.1.

K clients, each over one connection at a time (reconnecting after drops),
do random sequences of CREATE_SESSION (shared short and ~700-token system
prompts, unique ones, none), INFER (raw and chat; edge parameters; empty,
whitespace, emoji, lone-surrogate, invalid-UTF-8, near- and over-the-limit
prompts), ABORT at random moments, CLOSE_SESSION while generating, abrupt
TCP drops, clean reconnects, METRICS and malformed frames. Each client's
choices come from its own Random(seed, client), so a seed replays the same
sequences (up to the timing of the server's answers).

Checked during the run: every INFER gets exactly one END or ERROR within a
bound, no TOKEN after it, TOKEN indexes count from 0, END's generated_tokens
equals the TOKENs sent, every string the server sends is valid UTF-8, the
server never closes a connection on its own, deliberate bad requests get the
documented error. Checked after it, with every client gone: a fresh
connection sees sessions, generating and queued at 0, the KV cells come
back to the baseline (the prefix cache is refilled with the warm-up's
system prompts first, so the baseline is exact), the process is alive,
exits 0 on SIGTERM, and its stderr holds no sanitizer report.

A failure prints the seed, the invariant, every client's op log and the
server's stderr tail; then the seed is replayed with fewer clients and
steps, and the smallest configuration that still fails is printed.

  tests/chaos/chaos.py --bin build/src/inferencecenter --model M.gguf --seeds 100
  tests/chaos/chaos.py --bin ... --model ... --seed 17 --seed 23 --clients 2
Exit status: 0 all seeds passed, 1 some failed, 2 usage or set-up error.
Standard library and python3-websockets only.
"""
import argparse
import asyncio
import json
import mmap
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import websockets
from websockets.frames import Opcode

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer",
                   "WARNING: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")

ERROR_CODES = {"bad_json", "bad_request", "unknown_type", "unauthenticated",
               "session_not_found", "session_limit", "capacity", "busy", "not_running",
               "prompt_too_long", "message_too_large", "overloaded", "internal"}
END_REASONS = {"eos", "length", "stop_string", "abort", "context_full", "shutdown", "error"}

WORDS = ("the little dog ran to a big tree and saw a red ball . one day tom and sue went "
         "to the park with mom . she was happy and they played all day in the sun . "
         "then it began to rain so they went home and had warm soup").split()

EMOJI = "🦙🔥 👩‍👩‍👧 héllo ✓ 日本語 🇫🇷"

MAX_SESSIONS = 8
PREFIX_SLOTS = 2


class Violation(Exception):
    pass


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_sanitized(binary):
    """True when binary was built with AddressSanitizer (slower: scale the bounds)."""
    try:
        with open(binary, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b"__asan_init") >= 0
    except (OSError, ValueError):
        return False


def valid_utf8_tree(x):
    """Every string in the decoded JSON x is valid UTF-8 (no lone surrogates)."""
    if isinstance(x, str):
        try:
            x.encode("utf-8")
            return True
        except UnicodeEncodeError:
            return False
    if isinstance(x, dict):
        return all(valid_utf8_tree(k) and valid_utf8_tree(v) for k, v in x.items())
    if isinstance(x, list):
        return all(valid_utf8_tree(v) for v in x)
    return True


# ------------------------------------------------------------------ server

def _die_with_parent():
    """In the server's child process: SIGKILL it when chaos.py dies (a CTest
    time-out kills only us), so that no server is left behind."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    def __init__(self, binary, model, workdir, ctx, threads, extra=()):
        self.port = free_port()
        self.err_path = Path(workdir) / f"server-{self.port}.err"
        self.cmd = [binary, "serve", "--model", model, "--host", "127.0.0.1",
                    "--port", str(self.port), "--threads", str(threads),
                    "--ctx-size", str(ctx), "--max-sessions", str(MAX_SESSIONS),
                    "--prefix-cache", str(PREFIX_SLOTS), *extra]
        self._err = open(self.err_path, "wb")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:quarantine_size_mb=32")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_die_with_parent)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    def stderr(self):
        if not self._err.closed:
            self._err.flush()
        return self.err_path.read_text("utf-8", "replace")

    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise Violation(f"server exited {self.proc.returncode} while starting")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            time.sleep(0.05)
        raise Violation(f"server not healthy after {timeout} s")

    def stop(self, timeout):
        """SIGTERM; returns the exit status (None: had to be killed)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None
        finally:
            self._err.close()


# --------------------------------------------------------------- tracking

class Infer:
    """One INFER's replies."""

    def __init__(self, conn, mid, sid, desc, max_tokens, expect=None):
        self.conn = conn
        self.id = mid
        self.sid = sid
        self.desc = desc
        self.max_tokens = max_tokens
        self.expect = expect          # an ERROR code this INFER must get, or None
        self.sent_at = time.monotonic()
        self.last_activity = self.sent_at
        self.tokens = 0
        self.first_token = asyncio.Event()
        self.done = asyncio.Event()
        self.terminal = None          # the END or ERROR
        self.not_busy = False         # sent after every earlier INFER of its session ended
        self.reported = False         # its time-out was reported

    def on_message(self, m):
        t = m["type"]
        self.last_activity = time.monotonic()
        if self.terminal is not None:
            self.conn.run.fail(f"{t} after {self.terminal['type']} for INFER {self.id}: {m}")
            return
        if m.get("session_id", self.sid) != self.sid:
            self.conn.run.fail(f"INFER {self.id} on {self.sid} got a reply for another "
                               f"session: {m}")
        if t == "TOKEN":
            if m.get("index") != self.tokens:
                self.conn.run.fail(f"TOKEN index {m.get('index')} where {self.tokens} was due:"
                                   f" {m}")
            if not isinstance(m.get("text"), str):
                self.conn.run.fail(f"TOKEN without a string text: {m}")
            self.tokens += 1
            self.first_token.set()
        elif t in ("END", "ERROR"):
            self.terminal = m
            self.done.set()
            self.first_token.set()
            self.check_terminal(m)
        else:
            self.conn.run.fail(f"unexpected {t} for INFER {self.id}: {m}")

    def check_terminal(self, m):
        run = self.conn.run
        if m["type"] == "END":
            st = m.get("stats", {})
            if m.get("reason") not in END_REASONS:
                run.fail(f"END with unknown reason: {m}")
            if st.get("generated_tokens") != self.tokens:
                run.fail(f"END generated_tokens {st.get('generated_tokens')} but {self.tokens} "
                         f"TOKENs were sent: {m}")
            if self.max_tokens and self.tokens > self.max_tokens:
                run.fail(f"{self.tokens} tokens for max_tokens {self.max_tokens}: {m}")
            if self.expect:
                run.fail(f"INFER {self.desc} should get ERROR {self.expect}, got {m}")
        else:
            if m.get("code") not in ERROR_CODES:
                run.fail(f"ERROR with unknown code: {m}")
            if m.get("code") == "busy" and self.not_busy:
                run.fail(f"ERROR busy although every earlier INFER of {self.sid} had ended: {m}")
            if m.get("code") == "internal":
                run.fail(f"ERROR internal for INFER {self.desc}: {m}")
            if self.expect and m.get("code") not in self.expect.split("|"):
                run.fail(f"INFER {self.desc} should get ERROR {self.expect}, got {m}")
            if self.tokens:
                run.fail(f"ERROR after {self.tokens} TOKENs: {m}")


class Session:
    def __init__(self, sid, system_kind, system):
        self.sid = sid
        self.kind = system_kind
        self.system = system
        self.mode = None              # None until an INFER ran: "raw" / "chat"
        self.mode_unsure = False      # an aborted INFER may have fixed it
        self.infers = []              # every Infer sent on it
        self.closing = False          # CLOSE_SESSION sent
        self.closed = False           # SESSION_CLOSED received
        self.close_sent = float("inf")

    def running(self):
        return any(i.terminal is None for i in self.infers)


class Conn:
    """One WebSocket connection of a client; a reader task dispatches replies."""

    def __init__(self, client, n):
        self.client = client
        self.run = client.run
        self.name = f"c{client.idx}.{n}"
        self.ws = None
        self.next_id = 0
        self.infers = {}
        self.waiters = {}             # id -> Future for immediate replies
        self.noid = []                # Futures / Infers waiting for an id-less ERROR
        self.sessions = {}
        self.dropped = False          # we dropped or closed it
        self.expect_close = None      # a close code we provoked (1007: invalid UTF-8)
        self.gone = asyncio.Event()
        self.reader = None

    def new_id(self, tag):
        self.next_id += 1
        return f"{self.name}-{tag}{self.next_id}"

    async def open(self):
        t = self.run.bound
        self.ws = await websockets.connect(self.run.server.url, compression=None,
                                           ping_interval=None, open_timeout=t,
                                           close_timeout=1, max_size=None, max_queue=None)
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), t))
        if hello.get("type") != "HELLO":
            self.run.fail(f"{self.name}: first message is not HELLO: {hello}")
        self.reader = asyncio.ensure_future(self._read())
        return hello

    async def _read(self):
        try:
            async for raw in self.ws:
                if not isinstance(raw, str):
                    self.run.fail(f"{self.name}: server sent a binary frame")
                    continue
                try:
                    m = json.loads(raw)
                except ValueError:
                    self.run.fail(f"{self.name}: server sent invalid JSON: {raw[:200]!r}")
                    continue
                self.dispatch(m)
        except websockets.ConnectionClosed as e:
            rcvd = e.rcvd.code if e.rcvd else None
            if self.expect_close is not None and rcvd == self.expect_close:
                self.dropped = True   # provoked: its sessions go as with a drop
            elif not self.dropped:
                self.run.fail(f"{self.name}: connection closed by the server side "
                              f"(received close {rcvd}, {e})")
        except Exception as e:       # the reader must not die silently
            if not self.dropped:
                self.run.fail(f"{self.name}: reader failed: {e!r}")
        finally:
            self.gone.set()
            for f in list(self.waiters.values()) + [x for x in self.noid
                                                    if isinstance(x, asyncio.Future)]:
                if not f.done():
                    f.set_result(None)

    def dispatch(self, m):
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            self.run.fail(f"{self.name}: message without a type: {m}")
            return
        if not valid_utf8_tree(m):
            self.run.fail(f"{self.name}: invalid UTF-8 (lone surrogate) in {m!r}")
        t = m["type"]
        mid = m.get("id")
        if t == "SESSION_CLOSED":
            s = self.sessions.get(m.get("session_id"))
            if s is not None:
                for inf in s.infers:
                    if inf.terminal is None and inf.sent_at < s.close_sent:
                        self.run.fail(f"SESSION_CLOSED before the END or ERROR of {inf.id}: {m}")
                s.closed = True
        if mid is None:
            if t == "ERROR" and self.noid:
                w = self.noid.pop(0)
                if isinstance(w, Infer):
                    if w.terminal is not None:
                        self.run.fail(f"id-less ERROR for {w.id} after its terminal: {m}")
                    else:
                        w.on_message(m)
                elif not w.done():
                    w.set_result(m)
                return
            self.run.fail(f"{self.name}: unexpected message without id: {m}")
            return
        if mid in self.infers:
            self.infers[mid].on_message(m)
            return
        f = self.waiters.pop(mid, None)
        if f is not None:
            if not f.done():
                f.set_result(m)
            return
        if t == "ERROR" and isinstance(mid, str) and "-abort" in mid:
            if m.get("code") not in ("not_running", "session_not_found"):
                self.run.fail(f"ABORT got {m}")
            return
        self.run.fail(f"{self.name}: message with an unknown id: {m}")

    async def send(self, msg):
        data = msg if isinstance(msg, (str, bytes)) else json.dumps(msg)
        try:
            if isinstance(data, bytes):
                await self.ws.write_frame(True, Opcode.TEXT, data)
            else:
                await self.ws.send(data)
            return True
        except websockets.ConnectionClosed:
            return False

    async def request(self, msg):
        """Sends msg with a fresh id; the reply (None if the connection went)."""
        msg["id"] = self.new_id(msg["type"][:3].lower())
        f = asyncio.get_running_loop().create_future()
        self.waiters[msg["id"]] = f
        if not await self.send(msg):
            self.waiters.pop(msg["id"], None)
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(f), self.run.bound)
        except asyncio.TimeoutError:
            self.run.fail(f"{self.name}: no reply to {msg['type']} {msg['id']} in "
                          f"{self.run.bound:.0f} s")
            return None

    async def expect_noid_error(self, data, code, what):
        f = asyncio.get_running_loop().create_future()
        self.noid.append(f)
        if not await self.send(data):
            return
        try:
            m = await asyncio.wait_for(asyncio.shield(f), self.run.bound)
        except asyncio.TimeoutError:
            self.run.fail(f"{self.name}: no ERROR for {what} in {self.run.bound:.0f} s")
            return
        if m is not None and m.get("code") != code:
            self.run.fail(f"{self.name}: {what} got {m}, want ERROR {code}")

    async def expect_close_1007(self, data, what):
        """A text frame that is not UTF-8 ends the connection with 1007 (RFC
        6455 8.1; docs/protocol.md); the client then reconnects."""
        self.expect_close = 1007
        if not await self.send(data):
            return
        try:
            await asyncio.wait_for(self.gone.wait(), self.run.bound)
        except asyncio.TimeoutError:
            self.run.fail(f"{self.name}: {what}: no close 1007 in {self.run.bound:.0f} s")
            return
        if not self.dropped:
            self.run.fail(f"{self.name}: {what}: the connection ended, but not with 1007")

    async def drop(self, how):
        """Ends the connection from our side: 'close' (close frame), 'abort'
        (TCP reset-ish, no close frame) or 'shutdown' (shutdown(2), no close frame)."""
        self.dropped = True
        if how == "close":
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except (asyncio.TimeoutError, websockets.ConnectionClosed, OSError):
                pass
        else:
            sock = self.ws.transport.get_extra_info("socket")
            if how == "shutdown" and sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.ws.transport.abort()
        if self.reader:
            try:
                await asyncio.wait_for(self.reader, 5)
            except (asyncio.TimeoutError, Exception):
                pass


# ------------------------------------------------------------------ client

class Client:
    def __init__(self, run, idx):
        self.run = run
        self.idx = idx
        self.rng = random.Random(f"{run.seed}:{idx}")
        self.conn = None
        self.n_conn = 0
        self.log = []
        self.tasks = []

    def note(self, s):
        self.log.append(f"{time.monotonic() - self.run.t0:7.3f} {s}")

    async def connect(self):
        self.n_conn += 1
        self.conn = Conn(self, self.n_conn)
        await self.conn.open()
        self.note(f"connect {self.conn.name}")

    def idle_sessions(self):
        return [s for s in self.conn.sessions.values()
                if not s.closing and not s.running()]

    def live_sessions(self):
        return [s for s in self.conn.sessions.values() if not s.closing]

    # ---------------------------------------------------------- the ops

    async def op_create(self):
        r = self.rng.random()
        pool = self.run.systems
        if r < 0.25:
            kind, system = "none", None
        elif r < 0.45:
            kind = self.rng.choice(["long0", "long1"])
            system = pool[kind]
        elif r < 0.75:
            kind = self.rng.choice(["short0", "short1"])
            system = pool[kind]
        elif r < 0.9:
            kind = "unique"
            system = f"You are helper {self.idx}-{self.rng.randrange(10**6)}. " + \
                words(self.rng, self.rng.randrange(2, 30))
        else:
            kind = "odd"
            system = self.rng.choice(["", " ", EMOJI, "\n\n", "Once upon a"])
        msg = {"type": "CREATE_SESSION"}
        if system is not None:
            msg["system"] = system
        if self.rng.random() < 0.3:
            msg["params"] = self.params(defaults=True)[0]
        self.note(f"CREATE_SESSION system={kind} params={msg.get('params')}")
        m = await self.conn.request(msg)
        if m is None:
            return
        if m["type"] == "SESSION_CREATED":
            sid = m["session_id"]
            if sid in self.conn.sessions:
                self.run.fail(f"session id {sid} handed out twice: {m}")
            self.conn.sessions[sid] = Session(sid, kind, system)
            self.note(f"  -> {sid}")
        elif m["type"] == "ERROR" and m.get("code") in ("capacity", "session_limit"):
            self.note(f"  -> {m['code']}")
        else:
            self.run.fail(f"CREATE_SESSION {kind} got {m}")

    def params(self, defaults=False):
        """(params, max_tokens or None, expected error or None)."""
        rng = self.rng
        p = {}
        expect = None
        r = rng.random()
        if r < 0.08 and not defaults:
            p["max_tokens"] = 0
            expect = "bad_request"
        elif r < 0.25:
            p["max_tokens"] = 1
        elif r < 0.33:
            p["max_tokens"] = 1_000_000
            p["ignore_eos"] = rng.random() < 0.5
        elif r < 0.36 and not defaults:
            p["max_tokens"] = 1_000_001
            expect = "bad_request"
        else:
            p["max_tokens"] = rng.randrange(2, 40)
        r = rng.random()
        if r < 0.4:
            p["temperature"] = 0
        elif r < 0.6:
            p["temperature"] = 2
        elif r < 0.65:
            p["temperature"] = 100
        if rng.random() < 0.25:
            p["stop"] = rng.sample([" the", "e", "", ".", "\n", EMOJI[:2], "dog ran",
                                    "x" * 256, "�"], rng.randrange(1, 6))
        if rng.random() < 0.3:
            p["priority"] = rng.choice(["high", "normal", "low"])
        if rng.random() < 0.1:
            p.update(top_k=0, top_p=rng.choice([0.0, 1.0]), min_p=rng.choice([0.0, 1.0]))
        if rng.random() < 0.1:
            p.update(repeat_penalty=rng.choice([0.5, 1.3, 100]),
                     repeat_last_n=rng.choice([-1, 0, 64, 1_000_000]))
        if rng.random() < 0.2:
            p["seed"] = rng.randrange(2 ** 32)
        if rng.random() < 0.15 and "ignore_eos" not in p:
            p["ignore_eos"] = True
        return p, p.get("max_tokens"), expect

    def prompt(self):
        """(kind, prompt str or bytes, expected error or None)."""
        rng = self.rng
        r = rng.random()
        if r < 0.10:
            return "empty", "", None
        if r < 0.16:
            return "space", rng.choice([" ", "   ", "\n", "\t \n ", "\u00a0"]), None
        if r < 0.24:
            return "emoji", EMOJI * rng.randrange(1, 4), None
        if r < 0.30:
            return "surrogate", rng.choice(["\ud800", "x\udfff y", "\ud83d"]), "bad_json"
        if r < 0.35:
            return "bad-utf8", b"\xff\xfe", "close1007"
        if r < 0.38:
            return "nul", "a\u0000b", "bad_request"
        if r < 0.45:
            n = self.run.ctx - rng.randrange(1, 24)
            return f"near-limit~{n}", self.run.filler(n), None
        if r < 0.50:
            n = self.run.ctx + rng.randrange(50, 400)
            return f"over-limit~{n}", self.run.filler(n), "prompt_too_long"
        if r < 0.51:
            return "huge-200KB", "dog " * 50_000, "prompt_too_long"
        return "words", words(rng, rng.randrange(1, 20)), None

    async def op_infer(self):
        rng = self.rng
        live = self.live_sessions()
        if not live:
            return await self.op_create()
        idle = self.idle_sessions()
        # mostly an idle session; sometimes a busy one (must get `busy`)
        s = rng.choice(idle) if idle and rng.random() < 0.9 else rng.choice(live)
        pkind, prompt, pexpect = self.prompt()
        params, max_tokens, qexpect = self.params()
        if s.mode is None:
            raw = rng.random() < 0.5
        else:
            raw = (s.mode == "raw") if rng.random() < 0.9 else (s.mode != "raw")
        # busy: an INFER of ours is unanswered (its END may be on the way,
        # so `busy` is possible, not certain); not busy: every INFER of the
        # session has its END or ERROR, so `busy` would be wrong
        busy = s.running()
        mismatch = s.mode is not None and (s.mode == "raw") != raw
        # Parse errors come first, then field errors, then the session's
        # state, then what the scheduler finds (mode, context).
        if pexpect == "bad_json":
            expect = "bad_json"
        elif qexpect or pexpect == "bad_request":
            expect = "bad_request|busy" if busy else "bad_request"
        elif busy:
            expect = None
        elif mismatch:
            expect = "bad_request|prompt_too_long" if pexpect else "bad_request"
        elif pexpect == "prompt_too_long":
            expect = "prompt_too_long|bad_request" if s.mode_unsure else "prompt_too_long"
        else:
            expect = None
        mid = self.conn.new_id("inf")
        msg = {"type": "INFER", "session_id": s.sid, "raw": raw, "params": params, "id": mid}
        if pexpect == "close1007":  # never an INFER: the frame ends the connection
            self.note(f"INFER {mid} with invalid UTF-8 in its frame: expect close 1007")
            body = json.dumps({**msg, "prompt": "@@P@@"}).encode()
            await self.conn.expect_close_1007(body.replace(b"@@P@@", prompt), "bad-utf8 INFER")
            return
        follow = rng.choices(["none", "abort-now", "abort-first", "abort-k", "abort-delay",
                              "abort-after-end", "close-now", "close-k", "drop-k"],
                             [40, 8, 8, 8, 8, 5, 4, 4, 2])[0]
        k = rng.randrange(1, 12)
        delay = rng.random() * 0.05
        desc = (f"{mid} on {s.sid} (system={s.kind}, mode={'raw' if raw else 'chat'}) "
                f"prompt={pkind} params={params} then {follow}")
        self.note(f"INFER {desc}")
        inf = Infer(self.conn, mid, s.sid, desc, max_tokens, expect)
        inf.not_busy = not busy
        self.conn.infers[mid] = inf
        s.infers.append(inf)
        if isinstance(prompt, bytes):
            body = json.dumps({**msg, "prompt": "@@P@@"}).encode()
            data = body.replace(b"@@P@@", prompt)
            self.conn.noid.append(inf)
        elif pkind == "surrogate":
            data = json.dumps({**msg, "prompt": prompt})       # escaped: "\ud800"
            self.conn.noid.append(inf)
        else:
            data = json.dumps({**msg, "prompt": prompt})
        if not await self.conn.send(data):
            return
        conn = self.conn
        self.tasks.append(asyncio.ensure_future(self.follow_up(conn, s, inf, follow, k, delay,
                                                               raw)))
        # let it run alone for a moment now and then
        if rng.random() < 0.3:
            await self.wait_infer(inf, short=True)

    async def follow_up(self, conn, s, inf, follow, k, delay, raw):
        """What happens to one INFER after it was sent."""
        try:
            if follow == "abort-now":
                await conn.send({"type": "ABORT", "session_id": s.sid,
                                 "id": conn.new_id("abort")})
            elif follow == "abort-delay":
                await asyncio.sleep(delay)
                await conn.send({"type": "ABORT", "session_id": s.sid,
                                 "id": conn.new_id("abort")})
            elif follow in ("abort-first", "abort-k", "close-k", "drop-k"):
                n = 1 if follow == "abort-first" else k
                end = time.monotonic() + self.run.bound
                while inf.tokens < n and inf.terminal is None and not conn.gone.is_set() \
                        and time.monotonic() < end:
                    await asyncio.sleep(0.002)
                if follow.startswith("abort"):
                    await conn.send({"type": "ABORT", "session_id": s.sid,
                                     "id": conn.new_id("abort")})
                elif follow == "close-k":
                    await self.close_session(conn, s)
                elif not conn.dropped and conn is self.conn:
                    self.note(f"drop {conn.name} after {inf.tokens} tokens of {inf.id}")
                    await conn.drop(self.rng.choice(["abort", "shutdown"]))
            elif follow == "close-now":
                await self.close_session(conn, s)
            if not conn.dropped:
                await self.wait_infer(inf)
            t = inf.terminal
            if t is not None and t["type"] == "END":
                # an INFER aborted before its first token may or may not
                # have fixed the mode
                if t["reason"] != "abort" or inf.tokens:
                    if s.mode is None:
                        s.mode = "raw" if raw else "chat"
                elif s.mode is None:
                    s.mode_unsure = True
            if follow == "abort-after-end" and not conn.dropped and not s.closing:
                await conn.send({"type": "ABORT", "session_id": s.sid,
                                 "id": conn.new_id("abort")})
        except Exception as e:
            self.run.fail(f"follow-up of {inf.id} failed: {e!r}")

    async def wait_infer(self, inf, short=False):
        """Waits for inf's END or ERROR. The bound: `bound` seconds without
        any reply to it (a long generation that keeps streaming is fine), and
        8 bounds in all."""
        bound = self.run.bound
        while True:
            now = time.monotonic()
            if short:
                t = 0.2
            else:
                t = min(inf.last_activity + bound, inf.sent_at + 8 * bound) - now
                if t <= 0:
                    break
            done = asyncio.ensure_future(inf.done.wait())
            gone = asyncio.ensure_future(inf.conn.gone.wait())
            try:
                await asyncio.wait([done, gone], timeout=t, return_when=asyncio.FIRST_COMPLETED)
            finally:
                done.cancel()
                gone.cancel()
            if short or inf.terminal is not None or inf.conn.gone.is_set():
                break
        if not short and inf.terminal is None and not inf.conn.dropped:
            if inf.conn.gone.is_set() or inf.reported:
                return                # the reader already reported the close
            inf.reported = True
            quiet = time.monotonic() - inf.last_activity
            self.run.fail(f"no END or ERROR for INFER {inf.desc}: {inf.tokens} TOKENs so far, "
                          f"nothing for {quiet:.0f} s, {time.monotonic() - inf.sent_at:.0f} s "
                          f"since it was sent")

    async def close_session(self, conn, s):
        if s.closing or conn.dropped:
            return
        s.closing = True
        s.close_sent = time.monotonic()
        self.note(f"CLOSE_SESSION {s.sid}")
        m = await conn.request({"type": "CLOSE_SESSION", "session_id": s.sid})
        if m is None:
            return
        if m["type"] != "SESSION_CLOSED" or m.get("reason") != "client":
            self.run.fail(f"CLOSE_SESSION {s.sid} got {m}")

    async def op_close(self):
        live = self.live_sessions()
        if live:
            await self.close_session(self.conn, self.rng.choice(live))

    async def op_abort(self):
        live = self.live_sessions()
        if live:
            s = self.rng.choice(live)
            self.note(f"ABORT {s.sid}")
            await self.conn.send({"type": "ABORT", "session_id": s.sid,
                                  "id": self.conn.new_id("abort")})

    async def op_metrics(self):
        conn = self.conn
        before = {s.sid for s in conn.sessions.values() if not s.closing}
        maybe = {s.sid for s in conn.sessions.values() if not s.closed}
        self.note("METRICS")
        m = await conn.request({"type": "METRICS"})
        if m is None:
            return
        if m.get("type") != "METRICS":
            self.run.fail(f"METRICS got {m}")
            return
        e = m.get("engine", {})
        listed = {x.get("session_id") for x in m.get("sessions", [])}
        sure = before & {s.sid for s in conn.sessions.values() if not s.closing}
        if not sure <= listed or not listed <= maybe:
            self.run.fail(f"METRICS lists {sorted(listed)}; this connection holds "
                          f"{sorted(sure)} (closing {sorted(maybe)})")
        if not (0 <= e.get("generating", -1) + e.get("queued", -1) <= e.get("sessions", -1)
                <= MAX_SESSIONS):
            self.run.fail(f"METRICS engine counts inconsistent: {e}")
        if not 0 <= e.get("kv_cells_used", -1) <= e.get("kv_cells_total", -1):
            self.run.fail(f"METRICS kv cells out of range: {e}")

    async def op_garbage(self):
        rng = self.rng
        what = rng.choice(["bad-utf8-frame", "surrogate-json", "binary", "junk", "null-id",
                           "unknown-type"])
        self.note(f"garbage {what}")
        c = self.conn
        if what == "bad-utf8-frame":
            await c.expect_close_1007(b'{"type":"METRICS","x":"\xc3\x28"}', what)
        elif what == "surrogate-json":
            await c.expect_noid_error('{"type":"CREATE_SESSION","system":"\\udc00"}',
                                      "bad_json", what)
        elif what == "junk":
            await c.expect_noid_error('{"type":"INFER",', "bad_json", what)
        elif what == "binary":
            f = asyncio.get_running_loop().create_future()
            c.noid.append(f)
            try:
                await c.ws.send(b'{"type":"METRICS"}')
            except websockets.ConnectionClosed:
                return
            m = await asyncio.wait_for(asyncio.shield(f), self.run.bound)
            if m is not None and m.get("code") != "bad_request":
                self.run.fail(f"binary frame got {m}")
        elif what == "null-id":
            await c.expect_noid_error({"type": "METRICS", "id": None}, "bad_request", what)
        else:
            m = await c.request({"type": "WHATEVER"})
            if m is not None and m.get("code") != "unknown_type":
                self.run.fail(f"unknown type got {m}")

    async def op_prefix_race(self):
        """Two sessions with the same fresh long system prompt: the first
        starts computing the shared prefix, the second waits for it, and the
        first goes away mid-prefill (ABORT, CLOSE_SESSION or a dropped
        connection). The second must still get its END."""
        rng = self.rng
        system = f"Race {self.idx}-{rng.randrange(10**9)}. " + self.run.systems["long0"]
        how = rng.choice(["abort", "close", "drop"])
        delay = rng.random() * 0.04
        self.note(f"prefix race: owner leaves by {how} after {delay * 1000:.0f} ms")
        owner_conn = self.conn
        if how == "drop":
            # the owner lives on a connection of its own
            self.n_conn += 1
            owner_conn = Conn(self, self.n_conn)
            try:
                await owner_conn.open()
            except Exception as e:
                self.run.fail(f"prefix race: connect failed: {e!r}")
                return
        sids = []
        for conn in (owner_conn, self.conn):
            m = await conn.request({"type": "CREATE_SESSION", "system": system})
            if m is None or m["type"] != "SESSION_CREATED":
                if m is not None and m.get("code") not in ("capacity", "session_limit"):
                    self.run.fail(f"prefix race: CREATE_SESSION got {m}")
                if how == "drop":
                    await owner_conn.drop("close")
                return
            s = Session(m["session_id"], "race", system)
            conn.sessions[s.sid] = s
            sids.append((conn, s))
        raw = rng.random() < 0.5
        infs = []
        for conn, s in sids:
            mid = conn.new_id("inf")
            inf = Infer(conn, mid, s.sid, f"{mid} on {s.sid} (prefix race, "
                        f"{'raw' if raw else 'chat'})", 8)
            inf.not_busy = True
            conn.infers[mid] = inf
            s.infers.append(inf)
            infs.append(inf)
            await conn.send({"type": "INFER", "session_id": s.sid, "raw": raw, "id": mid,
                             "prompt": " Go on.", "params": {"max_tokens": 8,
                                                             "temperature": 0}})
        self.note(f"  owner {sids[0][1].sid}, waiter {sids[1][1].sid}")
        await asyncio.sleep(delay)
        oconn, osess = sids[0]
        if how == "abort":
            await oconn.send({"type": "ABORT", "session_id": osess.sid,
                              "id": oconn.new_id("abort")})
        elif how == "close":
            await self.close_session(oconn, osess)
        else:
            await oconn.drop(rng.choice(["abort", "shutdown"]))
        for inf, (conn, s) in zip(infs, sids):
            if not inf.conn.dropped:
                await self.wait_infer(inf)
            t = inf.terminal
            if t is not None and t["type"] == "END" and (t["reason"] != "abort" or inf.tokens):
                s.mode = "raw" if raw else "chat"
            else:
                s.mode_unsure = True

    async def op_drop(self, how=None):
        how = how or self.rng.choice(["abort", "shutdown", "close"])
        self.note(f"drop {self.conn.name} ({how})")
        await self.conn.drop(how)
        await self.connect()

    async def op_wait(self):
        self.note("wait for own INFERs")
        for s in list(self.conn.sessions.values()):
            for inf in list(s.infers):
                if inf.terminal is None:
                    await self.wait_infer(inf)

    async def run_steps(self, steps):
        ops = [(self.op_create, 14), (self.op_infer, 38), (self.op_close, 5),
               (self.op_abort, 6), (self.op_metrics, 6), (self.op_garbage, 6),
               (self.op_drop, 3), (self.op_wait, 8), (self.op_prefix_race, 3)]
        fns = [o for o, _ in ops]
        weights = [w for _, w in ops]
        await self.connect()
        for _ in range(steps):
            if self.run.stop_early:
                break
            op = self.rng.choices(fns, weights)[0]
            if self.conn.gone.is_set() and not self.conn.dropped:
                break                 # the server closed it: already reported
            if self.conn.dropped:
                await self.connect()  # a follow-up dropped it
            await op()
            await asyncio.sleep(self.rng.random() * 0.01)
        # the end: mostly finish cleanly, sometimes just vanish
        how = self.rng.choices(["wait-close", "close-now", "abort", "shutdown"],
                               [5, 2, 2, 1])[0]
        self.note(f"end: {how}")
        if how == "wait-close":
            await self.op_wait()
            how = "close"
        elif how == "close-now":
            how = "close"
        if not self.conn.dropped:
            await self.conn.drop(how)
        for t in self.tasks:
            try:
                await asyncio.wait_for(t, self.run.bound)
            except asyncio.TimeoutError:
                self.run.fail(f"client {self.idx}: a follow-up task did not finish")


# --------------------------------------------------------------------- run

class Run:
    """One seed: a fresh server, warm-up, the clients, the final checks."""

    def __init__(self, args, seed, clients, steps, workdir):
        self.args = args
        self.seed = seed
        self.client_ids = list(clients)
        self.steps = steps
        self.workdir = workdir
        self.ctx = args.ctx
        self.bound = args.bound * args.scale
        self.failures = []
        self.stop_early = False
        self.server = None
        self.clients = []
        self.t0 = time.monotonic()
        self.tok_per_unit = 1.0
        self.unit = " the dog ran."

    def fail(self, what):
        self.failures.append(f"{time.monotonic() - self.t0:7.3f} {what}")
        if len(self.failures) > 50:
            self.stop_early = True

    def filler(self, n_tokens):
        n = max(1, int(n_tokens / self.tok_per_unit))
        return self.unit * n

    async def setup(self):
        """Calibrates the filler, builds the system prompts, fills the prefix
        cache with the warm-up prompts and records the baseline."""
        c = Client(self, -1)
        await c.connect()
        conn = c.conn
        # tokens per filler unit, from a raw session's prompt_tokens
        units = 40
        self.tok_per_unit = await self.measure(c, self.unit * units) / units
        # ~700+ token shared system prompts and short shared ones
        rng = random.Random("systems")
        self.systems = {
            "long0": "You are a patient storyteller. " + words(rng, 600),
            "long1": "Rules for the assistant: " + words(rng, 650),
            "short0": "You are a storyteller for small children.",
            "short1": "Answer in one short sentence, please.",
        }
        for key in ("long0", "long1"):
            for _ in range(6):
                n = await self.measure(c, self.systems[key])
                if n < 720:
                    self.systems[key] += " " + words(rng, int((760 - n) / self.tok_per_unit * 3))
                elif n > self.ctx - 150:
                    text = self.systems[key]
                    self.systems[key] = text[:int(len(text) * (self.ctx - 200) / n)]
                else:
                    break
            self.long_tokens = n
        await self.flush_prefixes(c)
        await self.wait_quiet(conn, None)
        self.baseline = (await conn.request({"type": "METRICS"}))["engine"]["kv_cells_used"]
        await conn.drop("close")

    async def measure(self, c, text):
        """Prompt tokens of text as a raw prompt of a fresh session."""
        conn = c.conn
        m = await conn.request({"type": "CREATE_SESSION"})
        sid = m["session_id"]
        inf = Infer(conn, conn.new_id("cal"), sid, "calibration", 1)
        conn.infers[inf.id] = inf
        await conn.send({"type": "INFER", "session_id": sid, "raw": True, "id": inf.id,
                         "prompt": text, "params": {"max_tokens": 1, "temperature": 0}})
        await c.wait_infer(inf)
        await conn.request({"type": "CLOSE_SESSION", "session_id": sid})
        t = inf.terminal
        if t is not None and t.get("code") == "prompt_too_long":
            return int(re.search(r"needs (\d+) tokens", t["message"]).group(1))
        if t is None or t["type"] != "END":
            raise Violation(f"calibration INFER failed: {t}")
        return t["stats"]["prompt_tokens"]

    def warm_systems(self):
        return [f"Warm-up system prompt number {i}: the quick brown fox jumps over the lazy "
                f"dog near the river bank." for i in range(PREFIX_SLOTS)]

    async def flush_prefixes(self, c):
        """Runs the warm-up system prompts again, one after another, so that
        the prefix cache holds exactly them (each is then the most recently
        used): the KV cells with no sessions are then the baseline."""
        conn = c.conn
        for system in self.warm_systems():
            m = await conn.request({"type": "CREATE_SESSION", "system": system})
            if m is None or m["type"] != "SESSION_CREATED":
                self.fail(f"prefix flush: CREATE_SESSION got {m}")
                return
            sid = m["session_id"]
            inf = Infer(conn, conn.new_id("warm"), sid, f"warm-up on {sid}", 1)
            conn.infers[inf.id] = inf
            await conn.send({"type": "INFER", "session_id": sid, "raw": True, "id": inf.id,
                             "prompt": " And so on.", "params": {"max_tokens": 1,
                                                                 "temperature": 0}})
            await c.wait_infer(inf)
            if inf.terminal is None or inf.terminal["type"] != "END":
                self.fail(f"prefix flush: INFER got {inf.terminal}")
            m = await conn.request({"type": "CLOSE_SESSION", "session_id": sid})
            if m is None or m["type"] != "SESSION_CLOSED":
                self.fail(f"prefix flush: CLOSE_SESSION got {m}")

    async def wait_quiet(self, conn, kv):
        """Polls METRICS until no session, generation or queued request is
        left (and the KV cells are kv, unless None); fails at the deadline."""
        deadline = time.monotonic() + self.bound
        m = None
        while time.monotonic() < deadline:
            m = await conn.request({"type": "METRICS"})
            if m is None:
                break
            e = m["engine"]
            if e["sessions"] == 0 and e["generating"] == 0 and e["queued"] == 0 and \
                    (kv is None or e["kv_cells_used"] == kv):
                return True
            await asyncio.sleep(0.05)
        e = m and m.get("engine")
        self.fail("with every client gone, METRICS did not come back to sessions=0 "
                  "generating=0 queued=0" + (f" kv_cells_used={kv}" if kv is not None else "")
                  + f" within {self.bound:.0f} s: {e}")
        return False

    async def chaos(self):
        self.clients = [Client(self, i) for i in self.client_ids]
        await asyncio.gather(*(c.run_steps(self.steps) for c in self.clients))

    async def final(self):
        c = Client(self, -2)
        try:
            await c.connect()
        except Exception as e:
            self.fail(f"a fresh connection after the run failed: {e!r}")
            return
        if await self.wait_quiet(c.conn, None):
            await self.flush_prefixes(c)
            await self.wait_quiet(c.conn, self.baseline)
        await c.conn.drop("close")

    def execute(self):
        a = self.args
        srng = random.Random(f"{self.seed}:server")
        self.server_flags = ["--batch-size", str(srng.choice([512, 128, 64])),
                             "--kv-unified", srng.choice(["off", "off", "on"])]
        self.server = Server(a.bin, a.model, self.workdir, a.ctx, a.threads,
                             self.server_flags)
        status = "?"
        try:
            self.server.wait_ready(30 * a.scale)
            asyncio.run(self._main())
        except Violation as e:
            self.fail(str(e))
        except Exception as e:
            self.fail(f"harness error: {e!r}")
        finally:
            if self.server.alive():
                status = self.server.stop(20 * a.scale)
                if status is None:
                    self.fail("server did not exit within "
                              f"{20 * a.scale:.0f} s of SIGTERM (killed)")
                elif status != 0:
                    self.fail(f"server exited {status} on SIGTERM")
            else:
                status = self.server.proc.returncode
                self.server._err.close()
                self.fail(f"server died during the run (status {status})")
        err = self.server.stderr()
        for mark in SANITIZER_MARKS:
            if mark in err:
                self.fail(f"server stderr has a sanitizer report ({mark!r})")
                break
        return not self.failures

    async def _main(self):
        t = time.monotonic()
        await self.setup()
        self.t0 = time.monotonic()
        self.t_setup = self.t0 - t
        if os.environ.get("CHAOS_DEBUG"):
            print(f"setup {self.t_setup:.2f} s", flush=True)
        try:
            await asyncio.wait_for(self.chaos(), self.bound * 10 + self.steps * 2)
        except asyncio.TimeoutError:
            self.fail("the clients did not finish in time")
        if not self.server.alive():
            return
        await self.final()

    def report(self):
        only = "".join(f" --only-client {i}" for i in self.client_ids)
        out = [f"=== chaos FAILED: seed {self.seed} model {self.args.model}\n"
               f"    replay: --seed {self.seed} --steps {self.steps}{only}\n"
               f"    server: {' '.join(self.server.cmd) if self.server else '-'}"]
        out += ["--- failures:"] + [f"  {f}" for f in self.failures[:30]]
        for c in self.clients:
            out.append(f"--- client {c.idx} ops:")
            out += [f"  {line}" for line in c.log]
        err = self.server.stderr() if self.server else ""
        tail = err.splitlines()[-60:]
        out.append(f"--- server stderr ({self.server.err_path if self.server else '-'}), "
                   f"last {len(tail)} lines:")
        out += [f"  {line}" for line in tail]
        return "\n".join(out)


def classify(failures):
    """A short class for a failure list (for the summary)."""
    f = " ".join(failures)
    if "no END or ERROR" in f and "(prefix race" not in f and ": 0 TOKENs so far" not in f:
        return "generation stalled (TOKENs, then no END)"
    for key, name in (("sanitizer", "sanitizer report"), ("died", "server died"),
                      ("(prefix race", "shared-prefix waiter never answered"),
                      ("no END or ERROR", "INFER never answered"),
                      ("did not come back", "not back to idle/baseline"),
                      ("after END", "message after END"), ("SIGTERM", "bad shutdown"),
                      ("closed by the server", "server closed a connection"),
                      ("should get ERROR", "wrong error"), ("invalid UTF-8", "invalid UTF-8")):
        if key in f:
            return name
    return failures[0][8:80] if failures else "?"


def run_seed(args, seed, clients, steps):
    with tempfile.TemporaryDirectory(prefix="ic-chaos-") as wd:
        r = Run(args, seed, clients, steps, wd)
        t = time.monotonic()
        ok = r.execute()
        dt = time.monotonic() - t
        text = None if ok else r.report()
        return ok, dt, text, list(r.failures)


def shrink(args, seed, clients):
    """Replays seed with fewer clients (each alone first) and then fewer
    steps; returns (clients, steps, report) of the smallest replay that
    still failed within args.shrink replays, or None."""
    best = None
    tries = 0
    cands = [[i] for i in clients] if len(clients) > 1 else []
    for ids in cands:
        if tries >= args.shrink:
            return best
        tries += 1
        ok, _, text, _ = run_seed(args, seed, ids, args.steps)
        if not ok:
            best = (ids, args.steps, text)
            break
    ids = best[0] if best else clients
    steps = args.steps
    while tries < args.shrink and steps > 2:
        steps = max(2, steps // 2)
        tries += 1
        ok, _, text, _ = run_seed(args, seed, ids, steps)
        if ok:
            break
        best = (ids, steps, text)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the inferencecenter binary")
    ap.add_argument("--model", action="append", default=[],
                    help="GGUF model (repeat for several; each seed runs on each)")
    ap.add_argument("--skip-missing", action="store_true",
                    help="leave out --model files that do not exist instead of failing")
    ap.add_argument("--vocab-models", metavar="DIR",
                    help="also run on the real-vocabulary models vocab-*.gguf in DIR "
                         "(made there with --mkmodel when missing)")
    ap.add_argument("--mkmodel", help="ic-mkmodel, to make missing vocab models")
    ap.add_argument("--vocab-seeds", type=int,
                    help="run only the first N seeds on the vocab models (default: all)")
    ap.add_argument("--seeds", type=int, help="run seeds 1..N")
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--seed", type=int, action="append", help="run this seed (repeatable)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--only-client", type=int, action="append",
                    help="run only this client of the seed (repeatable; for replays)")
    ap.add_argument("--steps", type=int, default=30, help="ops per client")
    ap.add_argument("--ctx", type=int, default=1024, help="--ctx-size of the server")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bound", type=float, default=15.0,
                    help="seconds an INFER may take to end (scaled by --scale)")
    ap.add_argument("--scale", type=float, default=None,
                    help="time scale (default 3 for a sanitizer build, else 1)")
    ap.add_argument("--shrink", type=int, default=4,
                    help="replays to find a smaller failing run (0: none)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    ap.add_argument("--summary", help="append one line per run to this file")
    args = ap.parse_args()
    # SIGTERM (a CTest time-out, ^C from a wrapper) ends us through the
    # finally blocks, so the server gets its SIGTERM too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not os.access(args.bin, os.X_OK):
        print(f"chaos: {args.bin} is not executable", file=sys.stderr)
        return 2
    models = []
    vocab_paths = set()
    for m in args.model:
        if os.path.isfile(m):
            models.append(m)
        elif args.skip_missing:
            print(f"chaos: model {m} not found: left out", flush=True)
        else:
            print(f"chaos: model {m} not found", file=sys.stderr)
            return 2
    if args.vocab_models:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import vocab_models
        made = vocab_models.ensure_models(args.vocab_models, args.mkmodel)
        missing = [n for n in vocab_models.VOCABS if n not in made]
        if missing:
            print(f"chaos: no vocab models for {', '.join(missing)} (need the llama.cpp "
                  f"vocab files and --mkmodel)", flush=True)
        vocab_paths = set(made.values())
        models += list(made.values())
    if not models:
        print("chaos: no model to run on", file=sys.stderr)
        return 2
    if args.scale is None:
        args.scale = 3.0 if is_sanitized(args.bin) else 1.0
    seeds = list(args.seed or [])
    if args.seeds:
        seeds += list(range(args.first_seed, args.first_seed + args.seeds))
    if not seeds:
        seeds = [1]
    failed = []
    n = 0
    for k, seed in enumerate(seeds):
        for model in models:
            if model in vocab_paths and args.vocab_seeds is not None and k >= args.vocab_seeds:
                continue
            args.model = model
            clients = args.only_client or list(range(args.clients))
            ok, dt, text, failures = run_seed(args, seed, clients, args.steps)
            n += 1
            name = Path(model).name
            line = f"chaos seed {seed} {name}: {'ok' if ok else 'FAIL'} ({dt:.1f} s)"
            if not ok:
                line += f" [{classify(failures)}]"
            print(line, flush=True)
            if args.summary:
                with open(args.summary, "a") as f:
                    f.write(line + "\n")
            if ok:
                continue
            print(text, flush=True)
            failed.append((seed, name, classify(failures)))
            if args.shrink:
                best = shrink(args, seed, clients)
                if best:
                    only = "".join(f" --only-client {i}" for i in best[0])
                    print(f"=== smallest failing replay of seed {seed} on {name}: "
                          f"--seed {seed} --steps {best[1]}{only}", flush=True)
                    print(best[2], flush=True)
                else:
                    print(f"=== seed {seed} did not fail again with fewer clients/steps "
                          f"(timing): the full log above is the sequence", flush=True)
            if not args.keep_going:
                break
        if failed and not args.keep_going:
            break
        args.model = model
    print(f"chaos: {n} runs, {len(failed)} failed"
          + "".join(f"\n  seed {s} {m}: {c}" for s, m, c in failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
