"""Hostile and broken input, misbehaving clients, shutdown, and start-up
refusals: each gets the documented error or clean-up and never affects
other clients."""
import asyncio
import json
import os
import signal
import socket
import struct
import threading
import time

import pytest

from conftest import (GREEDY, LONG, STORY_12, Closed, RawWS, connect, http_get, needs_stories,
                      run, wait_metrics)


async def _usable(c):
    """The connection still answers requests."""
    m = await c.request({"type": "METRICS", "id": "alive"})
    assert m["type"] == "METRICS" and m["id"] == "alive", m


# ----------------------------------------------------------- bad messages

@pytest.mark.parametrize("text", ["{not json", "", "{\"type\":\"METRICS\"", "nul",
                                  "{\"type\":\"METRICS\",\"type\":\"METRICS\"}",
                                  "{\"type\":\"METRICS\"} trailing"])
def test_bad_json(server, text):
    async def body():
        c = await connect(server)
        r = await c.request(text)
        assert r["type"] == "ERROR" and r["code"] == "bad_json", r
        assert isinstance(r["message"], str) and r["message"]
        await _usable(c)
        await c.close()
    run(body())


@pytest.mark.parametrize("text", ["[1,2]", "42", "\"METRICS\"", "null", "true", "[]"])
def test_non_object_json(server, text):
    async def body():
        c = await connect(server)
        r = await c.request(text)
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        await _usable(c)
        await c.close()
    run(body())


@pytest.mark.parametrize("msg,expect_code,field", [
    ({"type": "FROBNICATE"}, "unknown_type", "FROBNICATE"),
    ({"type": "metrics"}, "unknown_type", "metrics"),
    ({"type": ""}, "unknown_type", ""),
    ({"nottype": "METRICS"}, "bad_request", "type"),
    ({"type": 5}, "bad_request", "type"),
    ({"type": None}, "bad_request", "type"),
])
def test_type_errors(server, msg, expect_code, field):
    async def body():
        c = await connect(server)
        r = await c.request({**msg, "id": "t"})
        assert r["type"] == "ERROR" and r["code"] == expect_code, r
        assert field in r["message"] and r["id"] == "t"
        await _usable(c)
        await c.close()
    run(body())


BAD_FIELDS = [
    ({"type": "INFER", "session_id": "s1", "prompt": 5}, "prompt"),
    ({"type": "INFER", "session_id": "s1"}, "prompt"),
    ({"type": "INFER", "session_id": 1, "prompt": "x"}, "session_id"),
    ({"type": "INFER", "prompt": "x"}, "session_id"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "raw": "yes"}, "raw"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": []}, "params"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"max_tokens": "8"}},
     "params.max_tokens"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"max_tokens": 0}},
     "params.max_tokens"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"max_tokens": 2.5}},
     "params.max_tokens"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"temperature": -1}},
     "params.temperature"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"temperature": "hot"}},
     "params.temperature"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"top_p": 2}},
     "params.top_p"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"top_k": -5}},
     "params.top_k"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"seed": -1}},
     "params.seed"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"stop": "x"}},
     "params.stop"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"stop": [1]}},
     "params.stop"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"stop": ["a"] * 9}},
     "params.stop"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"ignore_eos": 1}},
     "params.ignore_eos"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"priority": 2}},
     "params.priority"),
    ({"type": "INFER", "session_id": "s1", "prompt": "x", "params": {"max_tokens": None}},
     "params.max_tokens"),
    ({"type": "INFER", "session_id": "s1", "prompt": "a\u0000b"}, "prompt"),
    ({"type": "CREATE_SESSION", "system": 7}, "system"),
    ({"type": "CREATE_SESSION", "params": {"top_k": "many"}}, "params.top_k"),
    ({"type": "ABORT"}, "session_id"),
    ({"type": "CLOSE_SESSION", "session_id": ["s1"]}, "session_id"),
    ({"type": "SUBSCRIBE_METRICS", "interval_ms": "250"}, "interval_ms"),
    ({"type": "AUTH", "token": None}, "token"),
]


@pytest.mark.parametrize("msg,field", BAD_FIELDS,
                         ids=[f"{m['type']}-{f}-{i}" for i, (m, f) in enumerate(BAD_FIELDS)])
def test_wrong_field_types_name_the_field(server, msg, field):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        assert sid == "s1"
        r = await c.request({**msg, "id": 77})
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        assert f"'{field}'" in r["message"], r["message"]
        assert r["id"] == 77
        # nothing started: the session is idle and usable
        r = await c.request({"type": "ABORT", "session_id": sid})
        assert r["code"] == "not_running"
        await _usable(c)
        await c.close()
    run(body())


def test_unknown_fields_are_ignored(server):
    async def body():
        c = await connect(server)
        r = await c.request({"type": "CREATE_SESSION", "colour": "blue",
                             "params": {"max_tokens": 2, "flavour": 1}})
        assert r["type"] == "SESSION_CREATED", r
        res = await c.infer(r["session_id"], "Once", extra_field=True, max_tokens=2,
                            ignore_eos=True, **GREEDY)
        assert res.reason == "length" and len(res.tokens) == 2
        await c.close()
    run(body())


def test_binary_frame_is_refused(server):
    async def body():
        c = await connect(server)
        r = await c.request(b'{"type":"METRICS"}')
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        assert "binary" in r["message"]
        r = await c.request(bytes(range(256)))
        assert r["code"] == "bad_request"
        await _usable(c)
        await c.close()
    run(body())


@pytest.mark.parametrize("payload", [b"\xc3\x28", b'{"type":"METRICS","id":"\xff\xfe"}',
                                     b'{"type":"\xed\xa0\x80"}', b"\x80"])
def test_invalid_utf8_text_frame(server, payload):
    raw = RawWS(server.port)
    try:
        assert raw.recv_json()["type"] == "HELLO"
        raw.send_text(payload)
        try:
            r = raw.recv_json()
        except Closed as e:
            assert e.code == 1007, e      # the other allowed answer
            return
        assert r["type"] == "ERROR" and r["code"] == "bad_json", r
        raw.send_text(b'{"type":"METRICS","id":"after"}')
        r = raw.recv_json()
        assert r["type"] == "METRICS" and r["id"] == "after"
    finally:
        raw.close()


def test_fragmented_message_is_reassembled(server):
    raw = RawWS(server.port)
    try:
        raw.recv_json()
        raw.send_frame(0x1, b'{"type":"MET', fin=False)
        raw.send_frame(0x0, b'RICS","id"', fin=False)
        raw.send_frame(0x9, b"ping")                  # control frame in between
        raw.send_frame(0x0, b':"frag"}', fin=True)
        got = None
        while got is None:
            op, payload = raw.recv_frame()
            if op == 0xA:
                assert payload == b"ping"
            elif op == 0x1:
                got = json.loads(payload)
        assert got["type"] == "METRICS" and got["id"] == "frag"
    finally:
        raw.close()


def test_message_over_1mib(server):
    async def body():
        c = await connect(server)
        other = await connect(server)
        big = json.dumps({"type": "METRICS", "pad": "x" * (1 << 20)})
        assert len(big) > 1 << 20
        await c.send(big)
        r = await c.recv()
        assert r["type"] == "ERROR" and r["code"] == "message_too_large", r
        try:
            await _usable(c)            # the server may keep it open ...
        except Closed as e:
            assert e.code == 1009, e    # ... or close it with 1009
        await _usable(other)
        await other.close()
    run(body())


def test_message_of_exactly_the_limit_is_accepted(server):
    async def body():
        c = await connect(server)
        head = '{"type":"METRICS","id":"big","pad":"'
        msg = head + "x" * ((1 << 20) - len(head) - 2) + '"}'
        assert len(msg) == 1 << 20
        r = await c.request(msg)
        assert r["type"] == "METRICS" and r["id"] == "big", r
        await c.close()
    run(body())


def test_connection_usable_after_many_kinds_of_errors(server):
    async def body():
        c = await connect(server)
        for bad in ["{", "[]", '{"type":"NOPE"}', '{"type":"INFER"}', b"\x00",
                    '{"type":"ABORT","session_id":"s42"}']:
            r = await c.request(bad)
            assert r["type"] == "ERROR", r
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=3, ignore_eos=True, **GREEDY)
        assert res.reason == "length" and len(res.tokens) == 3
        await c.close()
    run(body())


def test_flood_of_bad_messages(server):
    async def body():
        flooder = await connect(server)
        other = await connect(server)
        sid = await other.create_session()
        n = 2000
        for i in range(n):
            await flooder.send("{bad" if i % 2 else '{"type":"NOPE"}')
        # another client is still served promptly while the flood is handled
        t0 = time.monotonic()
        res = await other.infer(sid, "Once upon a time", max_tokens=4, ignore_eos=True,
                                **GREEDY)
        assert res.reason == "length" and len(res.tokens) == 4
        assert time.monotonic() - t0 < 10
        # and every bad message got its error, in order
        codes = [(await flooder.recv())["code"] for _ in range(n)]
        assert codes == ["unknown_type" if i % 2 == 0 else "bad_json" for i in range(n)]
        await _usable(flooder)
        await flooder.close()
        await other.close()
    run(body(), timeout=90)


def test_flood_of_valid_requests(server):
    async def body():
        c = await connect(server)
        n = 2000
        await asyncio.gather(*(c.send({"type": "METRICS", "id": i}) for i in range(n)))
        ids = [(await c.recv())["id"] for _ in range(n)]
        assert ids == list(range(n))
        await c.close()
    run(body(), timeout=90)


# --------------------------------------------------- misbehaving clients

def test_client_that_stops_reading_is_cut_off(server):
    """A client that never reads while tokens stream and replies pile up is
    disconnected (bounded send queue), its sessions are cleaned up, memory
    stays bounded, and other clients are unaffected."""
    srv = server

    async def baseline():
        c = await connect(srv)
        m = await c.metrics()
        await c.close()
        return m["engine"]

    base = run(baseline())
    rss0 = srv.rss_kb()
    raw = RawWS(srv.port, rcvbuf=4096, timeout=20)
    raw.recv_json()
    for _ in range(4):
        raw.send_text(json.dumps({"type": "CREATE_SESSION"}))
    sids = [raw.recv_json()["session_id"] for _ in range(4)]
    for sid in sids:
        raw.send_text(json.dumps({"type": "INFER", "session_id": sid, "prompt": "Once upon",
                                  "raw": True, "id": "y" * 64, "params": LONG}))
    # From here on the client never reads. Every METRICS answer (~700 bytes
    # with four sessions) piles up on top of the token stream.
    req = RawWS.frame(0x1, json.dumps({"type": "METRICS", "id": "x" * 64}).encode())
    max_rss = rss0
    cut_off = False
    stop_sampling = threading.Event()

    def sample():
        nonlocal max_rss
        while not stop_sampling.is_set():
            try:
                max_rss = max(max_rss, srv.rss_kb())
            except OSError:
                return
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(200):                  # up to 60,000 requests, ~40 MB of replies
            try:
                raw.sock.sendall(req * 300)
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            except socket.timeout:
                break
        # Drain what the kernel buffered: a disconnected client sees the end
        # of the stream; a still-connected one would see replies for ever.
        deadline = time.monotonic() + 30
        raw.sock.settimeout(2)
        received = 0
        while not cut_off and time.monotonic() < deadline:
            try:
                chunk = raw.sock.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                cut_off = True
                break
            except socket.timeout:
                break
            if not chunk:
                cut_off = True
                break
            received += len(chunk)
    finally:
        stop_sampling.set()
        sampler.join(2)
        raw.close()
    assert cut_off, "the server kept a client that does not read"
    grew_mb = (max_rss - rss0) / 1024
    assert grew_mb < 96, f"server RSS grew by {grew_mb:.0f} MB for one slow client"

    async def after():
        c = await connect(srv)
        m = await wait_metrics(c, lambda m: m["engine"]["sessions"] == base["sessions"]
                               and m["engine"]["generating"] == 0)
        assert m["engine"]["kv_cells_used"] == base["kv_cells_used"]
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=4, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        await c.close()
    run(after())
    assert "behind" in srv.log() or "disconnect" in srv.log()


def test_slow_reader_does_not_stall_others(server):
    raw = RawWS(server.port, rcvbuf=4096)
    try:
        raw.recv_json()
        raw.send_text(json.dumps({"type": "CREATE_SESSION"}))
        sid = raw.recv_json()["session_id"]
        raw.send_text(json.dumps({"type": "INFER", "session_id": sid, "prompt": "Once",
                                  "params": LONG}))

        async def body():
            c = await connect(server)
            sid2 = await c.create_session()
            for _ in range(3):
                t0 = time.monotonic()
                res = await c.infer(sid2, "Once upon a time", max_tokens=4, ignore_eos=True,
                                    **GREEDY)
                assert res.reason == "length" and len(res.tokens) == 4
                assert time.monotonic() - t0 < 10
            m = await c.metrics()
            assert m["engine"]["generating"] >= 1     # the slow reader's generation runs on
            await c.close()
        run(body())
    finally:
        raw.close()


@pytest.mark.parametrize("how", ["abort_transport", "rst", "close_no_handshake"])
def test_client_vanishing_mid_generation_is_cleaned_up(server, how):
    async def body():
        watcher = await connect(server)
        base = (await watcher.metrics())["engine"]
        if how == "abort_transport":
            c = await connect(server)
            sid = await c.create_session()
            sid2 = await c.create_session()
            await c.infer(sid2, "Once upon a time", max_tokens=3, ignore_eos=True, **GREEDY)
            await c.start_infer(sid, "Once upon a time", **LONG)
            assert (await c.recv())["type"] == "TOKEN"
            c.ws.transport.abort()
        else:
            raw = RawWS(server.port)
            raw.recv_json()
            raw.send_text(json.dumps({"type": "CREATE_SESSION"}))
            sid = raw.recv_json()["session_id"]
            raw.send_text(json.dumps({"type": "INFER", "session_id": sid, "prompt": "Once",
                                      "params": LONG}))
            assert raw.recv_json()["type"] == "TOKEN"
            if how == "rst":
                raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            raw.close()
        m = await wait_metrics(watcher, lambda m: m["engine"]["sessions"] == base["sessions"]
                               and m["engine"]["generating"] == 0)
        assert m["engine"]["kv_cells_used"] == base["kv_cells_used"]
        assert m["engine"]["queued"] == 0
        # the steps stop too: tokens/s decays to zero once nothing runs
        await wait_metrics(watcher, lambda m: m["engine"]["tokens_per_second"] == 0,
                           timeout=10, interval=0.2)
        await _usable(watcher)
        await watcher.close()
    run(body())


def test_disconnect_frees_sessions_and_kv_cells(server):
    async def body():
        watcher = await connect(server)
        base = (await watcher.metrics())["engine"]
        c = await connect(server)
        for i in range(3):
            sid = await c.create_session()
            res = await c.infer(sid, "Once upon a time there was a dog", max_tokens=8,
                                ignore_eos=True, **GREEDY)
            assert res.reason == "length"
        m = await watcher.metrics()
        assert m["engine"]["sessions"] == base["sessions"] + 3
        assert m["engine"]["kv_cells_used"] >= base["kv_cells_used"] + 3 * 16
        await c.close()
        await wait_metrics(watcher, lambda m: m["engine"]["sessions"] == base["sessions"]
                           and m["engine"]["kv_cells_used"] == base["kv_cells_used"])
        await watcher.close()
    run(body())


def test_system_prompt_cache_is_bounded_across_disconnects(server):
    """System prompts of 8+ tokens are kept as shared prefixes after their
    sessions close (a cache of --prefix slots); repeating the same system
    prompt over and over must not grow the KV use."""
    system = "You are a kind storyteller who tells short tales to children."

    async def cycle(watcher, base_sessions):
        c = await connect(server)
        for _ in range(2):
            sid = await c.create_session(system=system)
            res = await c.infer(sid, "Tell me a story", raw=False, max_tokens=6,
                                ignore_eos=True, **GREEDY)
            assert res.reason == "length"
        await c.close()
        m = await wait_metrics(watcher, lambda m: m["engine"]["sessions"] == base_sessions
                               and m["engine"]["generating"] == 0)
        return m["engine"]["kv_cells_used"]

    async def body():
        watcher = await connect(server)
        base = (await watcher.metrics())["engine"]
        after = [await cycle(watcher, base["sessions"]) for _ in range(3)]
        assert after[0] == after[1] == after[2], after
        assert after[0] - base["kv_cells_used"] < 64, (base, after)
        await watcher.close()
    run(body())


def test_many_idle_connections_do_not_affect_a_working_client(server):
    async def body():
        idle = await asyncio.gather(*(connect(server) for _ in range(300)))
        assert all(c.hello["type"] == "HELLO" for c in idle)
        c = await connect(server)
        sid = await c.create_session()
        t0 = time.monotonic()
        res = await c.infer(sid, "Once upon a time", max_tokens=12, **GREEDY)
        assert time.monotonic() - t0 < 10
        assert res.reason in ("length", "eos")
        assert len(res.tokens) == 12
        status, _ = http_get(server.port, "/health")
        assert status == 200
        # a few of the idle ones still answer
        for i in (0, 150, 299):
            await _usable(idle[i])
        await asyncio.gather(*(x.close() for x in idle))
        await _usable(c)
        await c.close()
    run(body(), timeout=120)


@needs_stories
def test_many_idle_connections_text_is_right(server):
    async def body():
        idle = await asyncio.gather(*(connect(server) for _ in range(100)))
        c = await connect(server)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=12, **GREEDY)
        assert res.text == STORY_12
        await asyncio.gather(*(x.close() for x in idle))
        await c.close()
    run(body(), timeout=120)


def test_http_garbage_does_not_hurt(server):
    for junk in [b"GARBAGE\r\n\r\n", b"GET /ws HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello",
                 b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n"]:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        try:
            s.sendall(junk)
            try:
                s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                pass
        finally:
            s.close()
    assert http_get(server.port, "/health")[0] == 200


def test_websocket_upgrade_on_other_path_is_refused(server):
    with pytest.raises(ConnectionError):
        RawWS(server.port, path="/other")
    assert http_get(server.port, "/health")[0] == 200


# ------------------------------------------------------------- shutdown

def test_sigterm_during_streaming(start_server):
    srv = start_server()

    async def body():
        c = await connect(srv)
        idle = await c.create_session()
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", id="run", **LONG)
        assert (await c.recv())["type"] == "TOKEN"
        other = await connect(srv)
        srv.proc.send_signal(signal.SIGTERM)
        seen = []
        with pytest.raises(Closed) as ei:
            while True:
                seen.append(await c.recv(15))
        assert ei.value.code == 1001
        types = [m["type"] for m in seen]
        assert set(types) <= {"TOKEN", "END", "SESSION_CLOSED"}, types
        ends = [m for m in seen if m["type"] == "END"]
        assert len(ends) == 1
        assert ends[0]["reason"] == "shutdown" and ends[0]["id"] == "run"
        assert ends[0]["session_id"] == sid
        end_at = seen.index(ends[0])
        assert all(m["type"] != "TOKEN" for m in seen[end_at:]), "TOKEN after END"
        closed = {m["session_id"]: m["reason"] for m in seen if m["type"] == "SESSION_CLOSED"}
        assert closed == {sid: "shutdown", idle: "shutdown"}
        assert seen.index(ends[0]) < min(i for i, m in enumerate(seen)
                                         if m["type"] == "SESSION_CLOSED" and
                                         m["session_id"] == sid)
        with pytest.raises(Closed) as ei:
            await other.recv(15)
        assert ei.value.code == 1001
    run(body())
    assert srv.wait_exit(20) == 0
    assert "stopped" in srv.log()


def test_sigterm_idle_server_exits_zero(start_server):
    srv = start_server()
    assert srv.terminate() == 0


def cpu_ticks(pid):
    """CPU time (user + system, in clock ticks) the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wait_until_idle(pid, timeout):
    """Returns once the process has used no CPU for half a second."""
    deadline = time.monotonic() + timeout
    last, still = cpu_ticks(pid), 0
    while still < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_ticks(pid)
        still = still + 1 if now == last else 0
        last = now


def test_sigterm_with_a_client_that_does_not_read(start_server):
    """A client that never reads cannot hold the server up: while it waits
    for the connection to drain the server reports 503 "stopping" and takes
    no new connections; after the shutdown time-out (10 s) it exits 0."""
    srv = start_server()
    raw = RawWS(srv.port, rcvbuf=4096)
    try:
        raw.recv_json()
        # ~5 MB of METRICS replies: more than the kernel buffers hold, less
        # than the 8 MiB that would get the client disconnected.
        req = RawWS.frame(0x1, json.dumps({"type": "METRICS", "id": "x" * 64}).encode())
        raw.sock.sendall(req * 9000)
        # Wait until the server has handled every request (slow under ASan)
        # and gone idle, so that its replies are really queued at SIGTERM.
        wait_until_idle(srv.proc.pid, timeout=30)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while True:
            status, body = http_get(srv.port, "/health")
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert status == 503 and json.loads(body) == {"status": "stopping",
                                                        "state": "stopping"}, (status, body)
        with pytest.raises((ConnectionError, OSError)):
            RawWS(srv.port, timeout=5)
        assert srv.wait_exit(30) == 0
        assert time.monotonic() - t0 < 25
        assert "did not close in time" in srv.log()
    finally:
        raw.close()


# ------------------------------------------------------------- start-up

def test_refuses_wildcard_address_without_tokens(start_server):
    srv = start_server(host="0.0.0.0", wait=False)
    srv.expect_exit = None
    rc = srv.wait_exit(20)
    assert rc != 0
    lines = [l for l in srv.stderr().splitlines() if l.strip()]
    assert len(lines) == 1, lines
    assert "0.0.0.0" in lines[0] and "--tokens" in lines[0]


def test_insecure_no_auth_allows_wildcard_address(start_server):
    srv = start_server(["--insecure-no-auth"], host="0.0.0.0")

    async def body():
        c = await connect(srv)
        assert c.hello["auth_required"] is False
        await c.create_session()
        await c.close()
    run(body())


def test_wildcard_address_with_tokens_starts(start_server, tmp_path):
    from conftest import new_token
    tok = new_token(tmp_path / "tokens", "alice")
    srv = start_server(["--tokens", tmp_path / "tokens"], host="0.0.0.0")
    srv.secrets.append(tok)

    async def body():
        c = await connect(srv, tok)
        assert c.hello["auth_required"] is True
        await c.close()
    run(body())


@pytest.mark.parametrize("kind", ["random", "truncated", "missing", "directory", "text"])
def test_bad_model_file_is_a_clear_error(start_server, tmp_path, kind):
    from conftest import MODEL
    path = tmp_path / "model.gguf"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        with open(MODEL, "rb") as f:
            path.write_bytes(f.read(3000))
    elif kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("this is not a model\n" * 100)
    srv = start_server(model=str(path), wait=False)
    srv.expect_exit = None
    rc = srv.wait_exit(30)
    assert rc != 0
    log = srv.stderr()
    errors = [l for l in log.splitlines() if "error" in l.lower()]
    assert errors, log
    assert any(str(path) in l for l in errors), log


def test_port_in_use_is_a_clear_error(start_server):
    import subprocess
    from conftest import IC_BIN, MODEL
    first = start_server()
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--port", str(first.port)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert str(first.port) in p.stderr
    assert http_get(first.port, "/health")[0] == 200
