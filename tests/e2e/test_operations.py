"""Operations: the config file, JSON log lines, systemd notifications
(READY, WATCHDOG, STOPPING) over a real notify socket, the internal
watchdog on a decode that really takes seconds, and SIGTERM mid-stream.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (GREEDY, HAVE_STORIES, IC_BIN, LONG, MODEL, STORIES, connect, http_get,
                      run, wait_metrics)

IC_MKMODEL = os.environ.get("IC_MKMODEL", str(Path(IC_BIN).parent / "ic-mkmodel"))


def serve(*args, timeout=20):
    """Runs `inferencecenter serve` expecting it to refuse to start."""
    return subprocess.run([IC_BIN, "serve", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------ config file

def test_config_file_sets_options_and_flags_win(start_server, tmp_path):
    cfg = tmp_path / "ic.conf"
    cfg.write_text("# InferenceCenter\n"
                   "max-sessions = 3\n"
                   "ctx-size = 256   ; inline comment\n"
                   "max-sessions-per-client = 2\n"
                   "\n"
                   "log-prompts = false\n")
    a = start_server(["--config", cfg])
    b = start_server(["--config", cfg, "--max-sessions", 2, "--ctx-size", 128])

    async def body():
        ca, cb = await connect(a), await connect(b)
        assert ca.hello["limits"]["max_sessions"] == 3
        assert ca.hello["limits"]["n_ctx_per_session"] == 256
        assert ca.hello["limits"]["max_sessions_per_client"] == 2
        assert cb.hello["limits"]["max_sessions"] == 2            # the flag wins
        assert cb.hello["limits"]["n_ctx_per_session"] == 128
        assert cb.hello["limits"]["max_sessions_per_client"] == 2  # from the file
        await ca.close()
        await cb.close()
    run(body())


@pytest.mark.parametrize("text,line,message", [
    ("max-sessions = 3\nbogus = 1\n", 2, "unknown key 'bogus'"),
    ("\n\nport = many\n", 3, "invalid value 'many' for 'port'"),
    ("ctx-size = 256\n[serve]\nport = 9000\n", 3, "sections are not supported"),
    ("max-sessions = 3\njust some words\n", 2, "not a 'key = value' line"),
    ("kv-unified = maybe\n", 1, "invalid value 'maybe' for 'kv-unified'"),
    ("insecure-no-auth = perhaps\n", 1, "invalid value 'perhaps' for 'insecure-no-auth'"),
    ("config = other.conf\n", 1, "unknown key 'config' (not allowed in a config file)"),
    ("port = 9000\nmodel = /" + "m" * 300 + ".gguf\n", 2, "line is longer than"),
])
def test_config_errors_stop_start_up_with_the_line(tmp_path, text, line, message):
    cfg = tmp_path / "bad.conf"
    cfg.write_text(text)
    p = serve("--config", cfg, "--model", MODEL)
    assert p.returncode == 2, p
    assert f"{cfg}:{line}: {message}" in p.stderr, p.stderr


def test_missing_config_file(tmp_path):
    p = serve("--config", tmp_path / "nope.conf", "--model", MODEL)
    assert p.returncode == 2
    assert "nope.conf: cannot read the config file" in p.stderr


def test_config_model_key(start_server, tmp_path):
    cfg = tmp_path / "ic.conf"
    cfg.write_text(f"model = {MODEL}\nmax-sessions = 1\n")
    srv = start_server(["--config", cfg])

    async def body():
        c = await connect(srv)
        assert c.hello["limits"]["max_sessions"] == 1
        await c.close()
    run(body())


# ------------------------------------------------------------ JSON logs

def test_json_log_lines_carry_ids_never_prompts_or_tokens(start_server, tmp_path):
    tokens = tmp_path / "tokens"
    token = subprocess.run([IC_BIN, "token", "add", "alice", "--tokens", str(tokens)],
                           capture_output=True, text=True, check=True).stdout.strip()
    secret_prompt = "Once upon a time zebra-7c1f"
    srv = start_server(["--tokens", tokens, "--log-format", "json", "--log-level", "debug"])
    srv.secrets += [token, "zebra-7c1f"]

    async def body():
        c = await connect(srv, token=token)
        sid = await c.create_session()
        r = await c.infer(sid, secret_prompt, max_tokens=4, **GREEDY)
        assert r.reason == "length"
        await c.request({"type": "INFER", "session_id": "s999", "prompt": "x"})
        await c.close()
        return sid, r.end["request_id"]
    sid, rid = run(body())
    assert srv.terminate() == 0
    lines = srv.stderr().splitlines()
    assert lines
    records = [json.loads(ln) for ln in lines]     # every line is one JSON object
    for rec in records:
        assert {"time", "level", "msg"} <= rec.keys(), rec
        assert rec["level"] in ("debug", "info", "warn", "error")
    ended = [r for r in records if r["msg"].startswith("generation ended")]
    assert len(ended) == 1, records
    assert ended[0]["client"] == "alice" and ended[0]["session"] == sid
    assert ended[0]["request"] == rid and ended[0]["level"] == "info"
    assert any(r["msg"].startswith("session created") and r.get("session") == sid
               for r in records)
    assert any("session_not_found" in r["msg"] for r in records)


def test_log_prompts_flag_logs_prompts_at_debug(start_server):
    srv = start_server(["--log-level", "debug", "--log-prompts"])

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        await c.infer(sid, "Once upon a time quokka-42", max_tokens=2, **GREEDY)
        await c.close()
    run(body())
    assert "prompt: Once upon a time quokka-42" in srv.stderr()


def test_text_logs_never_carry_prompts(start_server):
    srv = start_server()
    srv.secrets.append("wombat-99")

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        await c.infer(sid, "Once upon a time wombat-99", max_tokens=2, **GREEDY)
        await c.close()
    run(body())
    assert "generation ended: length" in srv.stderr()


# ------------------------------------------------------ systemd notify

class NotifySocket:
    """A stand-in for systemd's notify socket: collects the datagrams."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []            # (monotonic time, text)
        self._stop = False
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def seen(self, line):
        return [t for t, m in self.messages if line in m.split("\n")]

    def close(self):
        self._stop = True
        self._t.join(2)
        self.sock.close()


def test_sd_notify_ready_watchdog_stopping(start_server, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        # A long context: the generation must outlast the 2 s below on any model.
        srv = start_server(["--max-sessions", 1, "--prefix-cache", 0, "--ctx-size", 65536],
                           env={"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "1000000"})
        deadline = time.monotonic() + 5
        while not ns.seen("READY=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ns.seen("READY=1"), ns.messages
        assert any(m.startswith("READY=1\nSTATUS=serving ") for _, m in ns.messages)

        async def body():
            c = await connect(srv)
            sid = await c.create_session()
            await c.start_infer(sid, "Once upon a time", **LONG)
            await c.recv_type("TOKEN")
            await asyncio.sleep(2.2)      # busy, then idle: fed all along
            srv.proc.send_signal(signal.SIGTERM)
            while (m := await c.recv_type("TOKEN", "END"))["type"] == "TOKEN":
                pass
            assert m["reason"] == "shutdown"
        run(body())
        assert srv.wait_exit() == 0
        beats = ns.seen("WATCHDOG=1")
        # WATCHDOG_USEC 1 s: fed every 0.5 s by the scheduler loop.
        assert len(beats) >= 3, ns.messages
        assert max(b - a for a, b in zip(beats, beats[1:])) < 1.0, beats
        assert ns.seen("STOPPING=1"), ns.messages
        assert ns.seen("READY=1")[0] < ns.seen("STOPPING=1")[0]
    finally:
        ns.close()


def test_no_watchdog_no_beats(start_server, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    try:
        srv = start_server(env={"NOTIFY_SOCKET": ns.path})
        time.sleep(1.5)
        assert ns.seen("READY=1")
        assert not ns.seen("WATCHDOG=1")
        assert srv.terminate() == 0
    finally:
        ns.close()


# ------------------------------------------------------ internal watchdog

@pytest.fixture
def slow_model(tmp_path):
    """A model whose 2,000-token prompt takes seconds in one decode on one
    thread (a real slow step, not a hook): wide layers, a small vocab."""
    out = tmp_path / "slow.gguf"
    vocab = ["--vocab", STORIES] if HAVE_STORIES else []
    subprocess.run([IC_MKMODEL, *vocab, "--layers", "3", "--embd", "1024", "--heads", "8",
                    "--kv-heads", "8", "--ff", "2816", "--type", "f16", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    return str(out)


def test_watchdog_reports_a_stuck_scheduler_and_recovers(start_server, slow_model):
    # --max-step-ms 0: prompt tokens by count only, so the whole prompt goes
    # into one long step (time-bounded prefill would cut it into short ones).
    srv = start_server(["--watchdog-timeout", 1, "--max-sessions", 1, "--prefix-cache", 0,
                        "--ctx-size", 4096, "--batch-size", 4096, "--max-step-ms", 0],
                       model=slow_model)
    prompt = " ".join(["the cat sat on a mat"] * 330)

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        await c.start_infer(sid, prompt, max_tokens=2, **GREEDY)
        stuck = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, b = http_get(srv.port, "/health")
            if status == 503:
                stuck = json.loads(b)
                prom = http_get(srv.port, "/metrics")[1].decode()
                break
            await asyncio.sleep(0.1)
        assert stuck == {"status": "stuck", "state": "stuck"}, stuck
        assert "inferencecenter_scheduler_stalled 1" in prom
        assert 'inferencecenter_state{state="stuck"} 1' in prom
        r = await c.collect(sid, timeout=120)
        assert r.end is not None and r.end["stats"]["prompt_tokens"] >= 1500, r.end
        # The next check after the step sees progress again.
        deadline = time.monotonic() + 10
        while http_get(srv.port, "/health")[0] != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert http_get(srv.port, "/health")[0] == 200
        await c.close()
    run(body(), timeout=180)
    log = srv.stderr()
    assert "watchdog: the scheduler has made no progress" in log
    assert "watchdog: the scheduler is making progress again" in log


# ------------------------------------------------------------ shutdown

def test_sigterm_mid_stream_ends_generations_with_shutdown(start_server):
    srv = start_server(["--max-sessions", 3, "--prefix-cache", 0, "--ctx-size", 32768])

    async def body():
        clients = [await connect(srv) for _ in range(3)]
        sids = [await c.create_session() for c in clients]
        for c, sid in zip(clients, sids):
            await c.start_infer(sid, "Once upon a time", **LONG)
            await c.recv_type("TOKEN")
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        for c, sid in zip(clients, sids):
            while (m := await c.recv_type("TOKEN", "END"))["type"] == "TOKEN":
                pass
            assert m["reason"] == "shutdown"
            closed = await c.recv_type("SESSION_CLOSED")
            assert closed["reason"] == "shutdown"
        return t0
    t0 = run(body())
    assert srv.wait_exit(15) == 0
    assert time.monotonic() - t0 < 12
