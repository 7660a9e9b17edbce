"""One model over several llama.cpp rpc-servers (serve --rpc HOST:PORT,...):
two `ggml-rpc-server`s on 127.0.0.1 hold the layers, the server keeps only
the token embeddings.

Covers: the greedy text equals a local server's; the plan line says how
many layers go to each server; a killed rpc-server turns a running
generation into an ERROR (and an idle one's next generation too), /health
into 503 failed, new work into errors, and SIGTERM into a prompt exit 1,
never a hang or a crash; non-loopback addresses are refused without
--rpc-insecure; an unreachable server is a clear start-up error.
"""
import asyncio
import glob
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import (HAVE_STORIES, IC_BIN, MODEL, connect, free_port, http_get, run)

_DEFAULT = sorted(glob.glob(os.path.expanduser(
    "~/.cache/inferencecenter/llama-*/bin/ggml-rpc-server")))
RPC_SERVER = os.environ.get("IC_RPC_SERVER") or (_DEFAULT[0] if _DEFAULT else "")
PROMPT = "Once upon a time"


class RpcServer:
    def __init__(self, workdir, n):
        self.port = free_port()
        self.log_path = Path(workdir) / f"rpc-{n}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([RPC_SERVER, "-H", "127.0.0.1", "-p", str(self.port),
                                      "-t", "1"], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:   # listening: a connect works (the server takes one client at a time)
            import socket
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, \
                    self.log_path.read_text()
                time.sleep(0.05)

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def rpc_pair(tmp_path):
    if not os.access(RPC_SERVER, os.X_OK):
        pytest.fail(f"no ggml-rpc-server at {RPC_SERVER!r} (IC_RPC_SERVER; the bootstrap "
                    f"builds llama.cpp with GGML_RPC=ON and installs it)")
    servers = [RpcServer(tmp_path, i) for i in range(2)]
    yield servers
    for s in servers:
        s.kill()


def completion(port, max_tokens=32):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0}).encode(),
        headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["choices"][0]["text"]


def test_greedy_text_over_two_rpc_servers_equals_local(rpc_pair, start_server):
    local = start_server()
    split = start_server(args=("--rpc", ",".join(s.endpoint for s in rpc_pair)))
    want = completion(local.port, 48)
    assert want
    assert completion(split.port, 48) == want

    async def ws_turns():   # and a second turn on the same session's KV, remote
        out = []
        for srv in (local, split):
            c = await connect(srv)
            sid = await c.create_session()
            a = await c.infer(sid, PROMPT, temperature=0, max_tokens=16)
            b = await c.infer(sid, " The end. Once", temperature=0, max_tokens=16)
            out.append((a.text, b.text))
            await c.close()
        return out
    got = run(ws_turns())
    assert got[0] == got[1], got
    plan = [ln for ln in split.stderr().splitlines() if "GPU split:" in ln]
    assert len(plan) == 1, split.stderr()
    m = re.search(r"(\d+) of (\d+) layers on 2 devices \(RPC 127\.0\.0\.1:(\d+): (\d+), "
                  r"RPC 127\.0\.0\.1:(\d+): (\d+) \+ output\), 0 on CPU", plan[0])
    assert m, plan[0]
    assert {int(m.group(3)), int(m.group(5))} == {s.port for s in rpc_pair}
    assert int(m.group(4)) + int(m.group(6)) == int(m.group(2)) == int(m.group(1))
    for s in rpc_pair:
        assert f"RPC server {s.endpoint}: device RPC" in split.stderr()


def test_killed_rpc_server_fails_cleanly(rpc_pair, start_server):
    srv = start_server(args=("--rpc", ",".join(s.endpoint for s in rpc_pair)))
    srv.expect_exit = 1

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        await c.start_infer(sid, PROMPT, temperature=0, ignore_eos=True, max_tokens=100000)
        first = await c.recv()
        assert first["type"] == "TOKEN", first
        rpc_pair[1].kill()
        res = await c.collect(sid, timeout=20)
        assert res.error is not None and res.error["code"] == "internal", res.messages[-1]
        assert "RPC server was lost" in res.error["message"], res.error
        status, body_ = http_get(srv.port, "/health")
        assert (status, json.loads(body_)["status"]) == (503, "failed")
        assert http_get(srv.port, "/health/weight")[1] == b"ready down #failed\n"
        r = await c.request({"type": "INFER", "session_id": sid, "prompt": "again"})
        assert r["type"] == "ERROR" and r["code"] == "internal", r
        r = await c.request({"type": "CREATE_SESSION"})
        assert r["type"] == "ERROR" and r["code"] == "internal", r
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/completions",
                                     data=b'{"prompt":"x","max_tokens":2}',
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 503
        assert "RPC server was lost" in json.loads(e.value.read())["error"]["message"]
        m = await c.metrics()
        assert m["engine"]["state"] == "failed"
        await c.close()
    run(body(), timeout=60)
    assert "the model's backend failed" in srv.stderr()
    t0 = time.monotonic()
    assert srv.terminate(timeout=10) == 1
    assert time.monotonic() - t0 < 5
    assert "Aborted" not in srv.stderr() and "core dumped" not in srv.stderr()


def test_rpc_server_lost_while_idle_fails_the_next_generation(rpc_pair, start_server):
    srv = start_server(args=("--rpc", ",".join(s.endpoint for s in rpc_pair)))
    srv.expect_exit = 1
    assert completion(srv.port, 4)
    rpc_pair[0].kill()

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        res = await c.infer(sid, PROMPT, temperature=0, max_tokens=8, timeout=20)
        assert res.error is not None and res.error["code"] == "internal", res.messages
        assert http_get(srv.port, "/health")[0] == 503
        await c.close()
    run(body(), timeout=60)


def test_rpc_servers_gone_before_sigterm_exit_promptly(rpc_pair, start_server):
    # Freeing the model at shutdown talks to the servers: with them gone the
    # server must not wait for ever on its scheduler.
    srv = start_server(args=("--rpc", ",".join(s.endpoint for s in rpc_pair)))
    srv.expect_exit = 1
    assert completion(srv.port, 4)
    for s in rpc_pair:
        s.kill()
    t0 = time.monotonic()
    assert srv.terminate(timeout=10) == 1
    assert time.monotonic() - t0 < 5
    assert "an RPC server was lost during shutdown" in srv.stderr()


def test_rpc_addresses_are_checked_at_start(tmp_path):
    def serve(*args):
        return subprocess.run([IC_BIN, "serve", "--model", MODEL, "--port", str(free_port()),
                               *args], capture_output=True, text=True, timeout=30)
    # 192.0.2.1 is TEST-NET-1: refused before anything connects to it.
    p = serve("--rpc", "127.0.0.1:50052,192.0.2.1:50052")
    assert p.returncode == 2 and "not a loopback address" in p.stderr, p.stderr
    assert "--rpc-insecure" in p.stderr
    p = serve("--rpc", "127.0.0.1")
    assert p.returncode == 2 and "is not HOST:PORT" in p.stderr, p.stderr
    closed = free_port()
    p = serve("--rpc-insecure", "--rpc", f"127.0.0.1:{closed}")
    assert p.returncode == 1, p.stderr
    assert f"cannot reach RPC server 127.0.0.1:{closed}: Connection refused" in p.stderr
