"""End-to-end tests: the real `inferencecenter serve` binary on 127.0.0.1,
driven by a real WebSocket client (websockets) over protocol v1.

Environment:
  IC_BIN          the server binary (default: <repo>/build/inferencecenter)
  IC_STORIES      stories260K.gguf, the real trained model (default:
                  <repo>/../shared/models/stories260K.gguf); when it is
                  missing the suite runs on IC_TEST_MODELS/tiny-f32.gguf and
                  skips the tests that check real text
  IC_TEST_MODELS  generated test models (default: <repo>/build/test-models)
  IC_THREADS      --threads for the server (default 1: spin-waiting worker
                  threads slow to a crawl on a shared two-core machine)
  IC_MKMODEL      ic-mkmodel, to make the real-vocabulary models
                  (IC_TEST_MODELS/vocab-<name>.gguf) when they are missing
                  (default: <repo>/build/ic-mkmodel)

The fixture `any_model` runs a test on MODEL and on each real-vocabulary
model (tests/chaos/vocab_models.py: llama-spm, llama-bpe, qwen2, gpt-2,
phi-3, gemma-4; random weights, real tokenizer and chat template), and
`vserver` is a plain server on it. Tests that depend only on the protocol,
not on the text, use them so that every vocabulary is covered.

Tests are plain synchronous functions; each runs its async body with
`run(coro)` (there is no pytest-asyncio here).
"""
import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websockets

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "chaos"))
import vocab_models  # noqa: E402  (tests/chaos/vocab_models.py)

IC_BIN = os.environ.get("IC_BIN", str(ROOT / "build" / "inferencecenter"))
IC_TEST_MODELS = Path(os.environ.get("IC_TEST_MODELS", str(ROOT / "build" / "test-models")))
_STORIES = Path(os.environ.get("IC_STORIES",
                               str(ROOT.parent / "shared" / "models" / "stories260K.gguf")))
IC_THREADS = os.environ.get("IC_THREADS", "1")
IC_MKMODEL = os.environ.get("IC_MKMODEL", str(ROOT / "build" / "ic-mkmodel"))


def _readable(p):
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


HAVE_STORIES = _readable(_STORIES)
STORIES = str(_STORIES) if HAVE_STORIES else None
TINY = str(IC_TEST_MODELS / "tiny-f32.gguf")
MODEL = STORIES or TINY

needs_stories = pytest.mark.skipif(
    not HAVE_STORIES, reason="needs the real model stories260K.gguf (IC_STORIES)")

# Greedy continuation of raw "Once upon a time" by stories260K, token by token.
STORY_TOKENS = [",", " there", " was", " a", " little", " g", "ir", "l", " named", " Lily",
                ".", " She"]
STORY_12 = "".join(STORY_TOKENS)   # ", there was a little girl named Lily. She"

GREEDY = {"temperature": 0}

# A long-running generation: ignore_eos keeps it going until max_tokens.
LONG = {"temperature": 0, "ignore_eos": True, "max_tokens": 100000}


# ---------------------------------------------------------------- helpers

def run(coro, timeout=60):
    """Runs an async test body to completion (fails after timeout seconds)."""
    async def guarded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(guarded())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def token_add(tokens_path, name, *extra):
    """Runs `inferencecenter token add`; returns the CompletedProcess."""
    return subprocess.run([IC_BIN, "token", "add", name, "--tokens", str(tokens_path), *extra],
                          capture_output=True, text=True, timeout=30)


def new_token(tokens_path, name, *extra):
    p = token_add(tokens_path, name, *extra)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


class Server:
    """One `inferencecenter serve` process; logs go to files in workdir."""

    def __init__(self, workdir, model=None, args=(), host="127.0.0.1", threads=IC_THREADS,
                 env=None, port=None):
        self.port = port or free_port()   # port: a restart on the same one
        self.host = host
        self.model = model or MODEL
        n = len(list(Path(workdir).glob("server-*.log")))
        self.log_path = Path(workdir) / f"server-{n}.log"
        self.out_path = Path(workdir) / f"server-{n}.out"
        self.cmd = [IC_BIN, "serve", "--model", self.model, "--host", host,
                    "--port", str(self.port), "--threads", str(threads), *map(str, args)]
        self._log = open(self.log_path, "wb")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._log,
                                     stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        self.secrets = []           # strings that must never appear in the logs
        self.expect_exit = 0        # checked at teardown; None: don't check

    @property
    def ws_url(self):
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        """Everything the server wrote to stderr and stdout so far."""
        for f in (self._log, self._out):
            if not f.closed:
                f.flush()
        return (self.log_path.read_bytes() + self.out_path.read_bytes()).decode(
            "utf-8", "replace")

    def stderr(self):
        """What the server wrote to stderr so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", "replace")

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode} while starting:\n"
                                     f"{self.log()}")
            try:
                status, _ = http_get(self.port, "/health", timeout=1)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"server not healthy after {timeout} s:\n{self.log()}")

    def wait_exit(self, timeout=20):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server did not exit within {timeout} s:\n{self.log()}")

    def terminate(self, timeout=20):
        """SIGTERM; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait_exit(timeout)

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def close_files(self):
        self._log.close()
        self._out.close()


@pytest.fixture
def start_server(tmp_path):
    """start_server(args=(), model=None, host=..., wait=True, env=None) -> Server.

    At teardown every server still running gets SIGTERM and must exit 0
    (or server.expect_exit), and no string in server.secrets may appear in
    its logs."""
    servers = []

    def start(args=(), model=None, host="127.0.0.1", wait=True, threads=IC_THREADS, env=None):
        s = Server(tmp_path, model=model, args=args, host=host, threads=threads, env=env)
        servers.append(s)
        if wait:
            s.wait_ready()
        return s

    yield start
    problems = []
    for s in servers:
        try:
            rc = s.terminate()
        except AssertionError as e:
            problems.append(str(e))
            continue
        finally:
            s.close_files()
        if s.expect_exit is not None and rc != s.expect_exit:
            problems.append(f"server exited {rc}, expected {s.expect_exit}:\n{s.log()}")
        log = s.log()
        for secret in s.secrets:
            if secret in log:
                problems.append(f"secret {secret[:12]}... appears in the server log")
    assert not problems, "\n".join(problems)


@pytest.fixture
def server(start_server):
    """A plain open server (no tokens) on the default model."""
    return start_server()


# ------------------------------------------------ real vocabularies

VOCAB_NAMES = list(vocab_models.VOCABS)


@pytest.fixture(scope="session")
def vocab_model_paths():
    """{name: path} of the real-vocabulary models, made once if missing."""
    return vocab_models.ensure_models(IC_TEST_MODELS, IC_MKMODEL)


@pytest.fixture(scope="module", params=["default"] + VOCAB_NAMES,
                ids=["default"] + [f"vocab-{n}" for n in VOCAB_NAMES])
def any_model(request, vocab_model_paths):
    """MODEL, then each real-vocabulary model (skipped when it cannot be made)."""
    if request.param == "default":
        return MODEL
    path = vocab_model_paths.get(request.param)
    if path is None:
        pytest.skip(f"no vocab-{request.param}.gguf (needs llama.cpp's vocab files "
                    f"and IC_MKMODEL)")
    return path


@pytest.fixture(scope="module")
def vserver(any_model, tmp_path_factory):
    """A plain open server on any_model, shared by the tests of one module
    (loading a 262k-token vocabulary takes seconds): its tests use their own
    connections and close their sessions. It must exit 0 at the end."""
    s = Server(tmp_path_factory.mktemp("vserver"), model=any_model)
    try:
        s.wait_ready()
        yield s
    finally:
        try:
            rc = s.terminate()
        finally:
            s.close_files()
    assert rc == 0, f"server exited {rc}:\n{s.log()}"


# ------------------------------------------------------------ WS client

class Closed(Exception):
    """The server closed the connection; .code is the close code."""

    def __init__(self, code, reason=""):
        super().__init__(f"connection closed: {code} {reason}")
        self.code = code
        self.reason = reason


class Client:
    """A protocol v1 client over the websockets library."""

    def __init__(self, ws, hello):
        self.ws = ws
        self.hello = hello

    @classmethod
    async def connect(cls, server, token=None, **kw):
        ws = await websockets.connect(server.ws_url, compression=None, ping_interval=None,
                                      open_timeout=20, close_timeout=1, max_size=None, **kw)
        c = cls(ws, None)
        c.hello = await c.recv()
        assert c.hello["type"] == "HELLO", c.hello
        if token is not None:
            r = await c.request({"type": "AUTH", "token": token})
            assert r["type"] == "AUTH_SUCCESS", r
            c.auth = r
        return c

    async def send(self, msg):
        try:
            await self.ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))
        except websockets.ConnectionClosed as e:
            raise Closed(e.code, e.reason)

    async def recv(self, timeout=20):
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            raise Closed(e.code, e.reason)
        assert isinstance(data, str), f"server sent a binary frame: {data[:80]!r}"
        return json.loads(data)

    async def request(self, msg, timeout=20):
        await self.send(msg)
        return await self.recv(timeout)

    async def recv_type(self, *types, timeout=20):
        """Skips METRICS pushes; returns the next message of one of types."""
        while True:
            m = await self.recv(timeout)
            if m["type"] in types:
                return m
            assert m["type"] == "METRICS", f"expected {types}, got {m}"

    async def expect_silence(self, seconds):
        """Asserts that nothing arrives for seconds."""
        try:
            m = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected message: {m}")

    async def create_session(self, **fields):
        r = await self.request({"type": "CREATE_SESSION", **fields})
        assert r["type"] == "SESSION_CREATED", r
        return r["session_id"]

    async def metrics(self):
        r = await self.request({"type": "METRICS"})
        assert r["type"] == "METRICS", r
        return r

    async def start_infer(self, sid, prompt, raw=True, id=None, **params):
        msg = {"type": "INFER", "session_id": sid, "prompt": prompt, "raw": raw,
               "params": params}
        if id is not None:
            msg["id"] = id
        await self.send(msg)

    async def collect(self, sid=None, timeout=60):
        """TOKENs and the END of the running INFER (of sid when given).
        Returns a Result; an ERROR instead of END gives Result.error."""
        res = Result()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            m = await self.recv(max(left, 0.01))
            if m["type"] == "METRICS":
                continue
            if sid is not None and m.get("session_id", sid) != sid:
                raise AssertionError(f"message for another session: {m}")
            res.messages.append(m)
            if m["type"] == "TOKEN":
                assert res.end is None, f"TOKEN after END: {m}"
                res.tokens.append(m)
            elif m["type"] == "END":
                res.end = m
                return res
            elif m["type"] == "ERROR":
                res.error = m
                return res
            else:
                raise AssertionError(f"unexpected message during INFER: {m}")

    async def infer(self, sid, prompt, raw=True, id=None, timeout=60, **params):
        await self.start_infer(sid, prompt, raw=raw, id=id, **params)
        return await self.collect(sid, timeout)

    async def close(self):
        await self.ws.close()


class Result:
    def __init__(self):
        self.tokens = []
        self.end = None
        self.error = None
        self.messages = []

    @property
    def text(self):
        return "".join(t["text"] for t in self.tokens)

    @property
    def reason(self):
        return self.end["reason"] if self.end else None


async def connect(server, token=None, **kw):
    return await Client.connect(server, token, **kw)


async def wait_metrics(client, pred, timeout=20, interval=0.05):
    """Polls METRICS until pred(m) is true; returns that METRICS."""
    deadline = time.monotonic() + timeout
    m = None
    while time.monotonic() < deadline:
        m = await client.metrics()
        if pred(m):
            return m
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout} s; last METRICS: {m}")


# ------------------------------------------------ raw-socket WebSocket

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawWS:
    """A hand-rolled WebSocket client over a plain socket: for frames the
    websockets library will not send (invalid UTF-8 text) and for clients
    that misbehave (stop reading)."""

    def __init__(self, port, rcvbuf=None, timeout=10, path="/ws"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\n"
                          b"Host: 127.0.0.1:" + str(port).encode() + b"\r\n"
                          b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: " + key + b"\r\n"
                          b"Sec-WebSocket-Version: 13\r\n\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n", 1)[0]
        if not self.status_line.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(self.status_line.decode())
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        assert accept in head, head

    @staticmethod
    def frame(opcode, payload, fin=True):
        """A masked client frame."""
        n = len(payload)
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            hdr = struct.pack("!BB", b0, 0x80 | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
        mask = os.urandom(4)
        key = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") \
            if n else b""
        return hdr + mask + body

    def send_frame(self, opcode, payload, fin=True):
        self.sock.sendall(self.frame(opcode, payload, fin))

    def send_text(self, text):
        self.send_frame(0x1, text.encode() if isinstance(text, str) else text)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk

    def recv_frame(self):
        """(opcode, payload) of the next whole frame from the server."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        assert not b1 & 0x80, "server frames must not be masked"
        self._need(off + n)
        payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
        return b0 & 0x0F, payload

    def recv_json(self):
        """The next text message as JSON; raises Closed on a close frame."""
        while True:
            op, payload = self.recv_frame()
            if op == 0x1:
                return json.loads(payload)
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(code, payload[2:].decode("utf-8", "replace"))
            # ping/pong and others: ignore

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
