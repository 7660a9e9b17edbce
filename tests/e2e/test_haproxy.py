"""HAProxy (Debian's haproxy) in front of three replicas, from the committed
deploy/haproxy/haproxy.cfg with its addresses filled in from the
environment: replicas r1..r3 on 127.0.0.1 (their own ports, --node-name
rN), the proxy's front end on another. A second, test-only config file
adds HAProxy's stats socket, so the test can see what HAProxy thinks of
each replica (status, weight, the agent's words); the committed file is
used as is.

Covers: 30 clients spread over all three; a replica killed: its clients
reconnect through HAProxy and are served by the others; a replica that is
stopping gets no new connection (even one asking for it by affinity);
/ws?affinity=NAME lands on NAME; the agent's weight reaches HAProxy; the
OpenAI API sticks to one replica per API key. The durable-session resume
through HAProxy (RESUME_SESSION, issue 17) runs when the server has
--session-store.
"""
import asyncio
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websockets

from conftest import (ROOT, Closed, RawWS, Server, free_port, http_get, run)

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
NODES = ("r1", "r2", "r3")
REPLICA_ARGS = ("--max-sessions", "16", "--ctx-size", "256", "--trusted-proxy", "127.0.0.1")


class HAProxy:
    """haproxy -db -f haproxy.cfg -f <stats socket>, env filled in."""

    def __init__(self, workdir, replicas):
        self.port = free_port()
        self.sock_path = str(Path(workdir) / "haproxy.sock")
        extra = Path(workdir) / "test-stats.cfg"
        extra.write_text(f"global\n    stats socket {self.sock_path} level admin\n")
        env = {**os.environ, "IC_FRONT_HOST": "127.0.0.1", "IC_FRONT_PORT": str(self.port)}
        for i, r in enumerate(replicas, 1):
            env[f"IC_REPLICA{i}"] = f"127.0.0.1:{r.port}"
            env[f"IC_REPLICA{i}_PORT"] = str(r.port)
        self.log_path = Path(workdir) / "haproxy.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(CFG), "-f", str(extra)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)

    def log(self):
        self._log.flush()
        return self.log_path.read_text("utf-8", "replace")

    def stats(self):
        """{(backend, server): row} from `show stat`."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.sock_path)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        text = data.decode().lstrip("# ")
        return {(r["pxname"], r["svname"]): r for r in csv.DictReader(io.StringIO(text))
                if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait(self, pred, what, timeout=20):
        """Polls the stats until pred(stats) holds."""
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited {self.proc.returncode}:\n{self.log()}")
            try:
                st = self.stats()
                if pred(st):
                    return st
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"haproxy: {what} not reached in {timeout} s; last stats: "
                             f"{ {k: (v['status'], v['weight']) for k, v in (st or {}).items()} }"
                             f"\n{self.log()}")

    def wait_status(self, node, statuses, timeout=20):
        """statuses: first words of HAProxy's status ("DOWN (agent)" is DOWN)."""
        return self.wait(lambda st: all(st[(be, node)]["status"].split()[0] in statuses
                                        for be in ("ic_ws", "ic_openai")),
                         f"{node} in {statuses}", timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def cluster(start_server, tmp_path):
    """(haproxy, {node: Server}) with all three replicas UP in HAProxy."""
    if not Path(HAPROXY).exists():
        pytest.fail("haproxy is not installed (Debian package haproxy; scripts/bootstrap "
                    "installs it with IC_TEST_TOOLS=1)")
    replicas = {n: start_server(args=("--node-name", n, *REPLICA_ARGS), wait=False)
                for n in NODES}
    for r in replicas.values():
        r.wait_ready()
    hp = HAProxy(tmp_path, list(replicas.values()))
    try:
        hp.wait(lambda st: len(st) == 6 and all(r["status"] == "UP" for r in st.values()),
                "all replicas UP")
        yield hp, replicas
    finally:
        hp.stop()


async def connect(port, path="/ws"):
    """A websockets connection and its HELLO."""
    ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", compression=None,
                                  ping_interval=None, open_timeout=20, close_timeout=1,
                                  max_size=None)
    hello = json.loads(await asyncio.wait_for(ws.recv(), 20))
    assert hello["type"] == "HELLO", hello
    return ws, hello


async def request(ws, msg, timeout=20):
    await ws.send(json.dumps(msg))
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def session_and_turn(ws, prompt="Once upon a time", max_tokens=4):
    """Creates a session and runs one greedy turn; returns (sid, text)."""
    r = await request(ws, {"type": "CREATE_SESSION"})
    assert r["type"] == "SESSION_CREATED", r
    sid = r["session_id"]
    text = await turn(ws, sid, prompt, max_tokens)
    return sid, text


async def turn(ws, sid, prompt, max_tokens=4):
    await ws.send(json.dumps({"type": "INFER", "session_id": sid, "prompt": prompt,
                              "raw": True, "params": {"temperature": 0,
                                                      "max_tokens": max_tokens}}))
    text = ""
    while True:
        m = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if m["type"] == "TOKEN":
            text += m["text"]
        elif m["type"] == "END":
            return text
        else:
            raise AssertionError(f"unexpected during INFER: {m}")


def test_thirty_clients_spread_over_all_three(cluster):
    hp, replicas = cluster

    async def body():
        conns = []
        for _ in range(30):      # one at a time: leastconn sees each one arrive
            conns.append(await connect(hp.port))
        nodes = [h["node"] for _, h in conns]
        counts = {n: nodes.count(n) for n in NODES}
        assert all(c >= 7 for c in counts.values()), counts
        served = await asyncio.gather(*(session_and_turn(ws) for ws, _ in conns))
        assert all(text for _, text in served), served
        # Each replica holds its sessions: the agent's weight reaches HAProxy
        # below 100 (the words come from /health/weight on the replica).
        st = hp.wait(lambda st: all(int(st[("ic_ws", n)]["weight"]) < 100 for n in NODES),
                     "weights below 100")
        for n in NODES:
            status, body = http_get(replicas[n].port, "/health/weight")
            assert status == 200 and body.decode().startswith("up ready "), body
            assert st[("ic_ws", n)]["last_agt"].startswith("via agent : up"), st[("ic_ws", n)]
        for ws, _ in conns:
            await ws.close()
    run(body(), timeout=120)


def test_killed_replica_clients_reconnect_to_the_others(cluster):
    hp, replicas = cluster

    async def body():
        conns = [await connect(hp.port) for _ in range(9)]
        victims = [(ws, h) for ws, h in conns if h["node"] == "r2"]
        assert victims, [h["node"] for _, h in conns]
        for ws, _ in conns:
            await session_and_turn(ws)
        replicas["r2"].proc.kill()
        replicas["r2"].expect_exit = -signal.SIGKILL
        # Its clients see the connection drop; each reconnects through the
        # proxy (asking for r2 again: the proxy sends it elsewhere) and
        # recomputes its conversation on the new replica.
        for ws, _ in victims:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        again = [await connect(hp.port, "/ws?affinity=r2") for _ in victims]
        assert all(h["node"] in ("r1", "r3") for _, h in again), [h for _, h in again]
        texts = await asyncio.gather(*(session_and_turn(ws) for ws, _ in again))
        assert all(t for _, t in texts)
        # The others' clients never noticed.
        for ws, h in conns:
            if h["node"] != "r2":
                r = await request(ws, {"type": "METRICS"})
                assert r["type"] == "METRICS"
        hp.wait_status("r2", ("DOWN",), timeout=10)
        for ws, _ in conns + again:
            await ws.close()
    run(body(), timeout=120)


def test_stopping_replica_gets_no_new_connections(cluster):
    hp, replicas = cluster
    r3 = replicas["r3"]
    # A client that never reads holds r3 in its graceful stop for a while
    # (the server lingers on it), long enough to try to reach it.
    holder = RawWS(r3.port, rcvbuf=4096)
    r3.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while http_get(r3.port, "/health")[1] != b'{"status":"stopping","state":"stopping"}':
        assert time.monotonic() < deadline, "r3 never said stopping"
        time.sleep(0.01)

    async def body():
        # Asked for by name or not: the proxy sends them elsewhere (a 503
        # from r3 is retried on another replica; its agent says drain down).
        conns = await asyncio.gather(*(connect(hp.port, "/ws?affinity=r3" if i % 2 else "/ws")
                                       for i in range(10)))
        assert r3.proc.poll() is None, "r3 had already exited: nothing was tested"
        nodes = [h["node"] for _, h in conns]
        assert "r3" not in nodes, nodes
        for ws, _ in conns:
            await ws.close()
    run(body(), timeout=60)
    hp.wait_status("r3", ("DOWN", "DRAIN"), timeout=10)
    holder.sock.close()
    assert r3.wait_exit() == 0


def test_affinity_lands_on_the_named_replica(cluster):
    hp, _ = cluster

    async def body():
        for node in ("r2", "r1", "r3", "r2"):
            ws, h = await connect(hp.port, f"/ws?affinity={node}")
            assert h["node"] == node, (node, h)
            await session_and_turn(ws)
            await ws.close()
        # A name that no replica has: any replica serves it.
        ws, h = await connect(hp.port, "/ws?affinity=nosuch")
        assert h["node"] in NODES
        await ws.close()
    run(body())


def _oai(port, key=None, user=None):
    """(node, body) of a small /v1/completions through the proxy."""
    body = {"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0}
    if user:
        body["user"] = user
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["x-ic-node"], json.loads(r.read())


def test_openai_api_sticks_to_one_replica_per_key(cluster):
    hp, _ = cluster
    first = {}
    for k in range(12):
        for _ in range(3):
            node, b = _oai(hp.port, key=f"sk-client-{k}")
            assert b["choices"][0]["text"], b
            assert first.setdefault(k, node) == node, (k, first[k], node)
    assert len(set(first.values())) >= 2, first   # keys spread over replicas
    users = {u: {_oai(hp.port, user=f"user-{u}")[0] for _ in range(3)} for u in range(6)}
    assert all(len(s) == 1 for s in users.values()), users


# Durable sessions (issue 17: --session-store, resume_token, RESUME_SESSION):
# a server without them fails here, it does not skip.
def test_durable_session_resumes_on_its_own_replica(start_server, tmp_path):
    stores = {n: tmp_path / f"store-{n}" for n in NODES}
    replicas = {n: start_server(args=("--node-name", n, "--session-store", str(stores[n]),
                                      *REPLICA_ARGS), wait=False) for n in NODES}
    for r in replicas.values():
        r.wait_ready()
    hp = HAProxy(tmp_path, list(replicas.values()))
    try:
        hp.wait(lambda st: len(st) == 6 and all(r["status"] == "UP" for r in st.values()),
                "all replicas UP")

        async def body():
            # The unbroken conversation, for the expected answer.
            ref, _ = await connect(replicas["r1"].port)
            rsid, _ = await session_and_turn(ref, "Once upon a time", 6)
            want = await turn(ref, rsid, " the", 6)
            await ref.close()
            ws, hello = await connect(hp.port)
            node = hello["node"]
            r = await request(ws, {"type": "CREATE_SESSION"})
            sid, token = r["session_id"], r["resume_token"]
            await turn(ws, sid, "Once upon a time", 6)
            ws.transport.abort()          # the connection drops, no close frame
            ws2, hello2 = await connect(hp.port, f"/ws?affinity={node}")
            assert hello2["node"] == node
            r = await request(ws2, {"type": "RESUME_SESSION", "session_id": sid,
                                    "resume_token": token})
            assert r["type"] == "SESSION_RESUMED", r
            assert await turn(ws2, sid, " the", 6) == want
            await ws2.close()
            # Its replica restarts on the same store (kill -9): the session
            # is there again, through the proxy.
            old = replicas[node]
            old.proc.kill()
            old.expect_exit = -signal.SIGKILL
            old.wait_exit()
            hp.wait_status(node, ("DOWN",), timeout=10)
            new = Server(tmp_path, args=("--node-name", node, "--session-store",
                                         str(stores[node]), *REPLICA_ARGS), port=old.port)
            try:
                new.wait_ready()
                hp.wait_status(node, ("UP",), timeout=15)
                ws3, hello3 = await connect(hp.port, f"/ws?affinity={node}")
                assert hello3["node"] == node
                r = await request(ws3, {"type": "RESUME_SESSION", "session_id": sid,
                                        "resume_token": token})
                assert r["type"] == "SESSION_RESUMED", r
                await ws3.close()
            finally:
                assert new.terminate() == 0
                new.close_files()
        run(body(), timeout=120)
    finally:
        hp.stop()
