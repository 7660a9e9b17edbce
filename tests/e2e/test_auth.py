"""API tokens: `inferencecenter token add`, AUTH, per-client limits, SIGHUP
reload, the failed-AUTH throttle, tokens files that stop start-up, and
secrets kept out of the logs."""
import asyncio
import hashlib
import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import (GREEDY, Closed, IC_BIN, connect, new_token, run, token_add)


def _tokens(tmp_path, *clients):
    """Makes a tokens file; clients are (name, *token_add options). Returns
    (path, {name: token})."""
    path = tmp_path / "tokens"
    toks = {}
    for name, *extra in clients:
        toks[name] = new_token(path, name, *extra)
    return path, toks


def _auth_server(start_server, path, toks, args=()):
    srv = start_server(["--tokens", path, *args])
    srv.secrets.extend(toks.values())
    return srv


async def _wait_log(srv, text, count=1, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.log().count(text) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{text!r} not logged {count} times:\n{srv.log()}")


# ------------------------------------------------------------- token add

def test_token_add_creates_private_file_and_prints_token_once(tmp_path):
    path = tmp_path / "tokens"
    p = token_add(path, "alice")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and len(lines[0]) >= 32, p.stdout
    tok = lines[0]
    assert tok not in p.stderr
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    text = path.read_text()
    assert tok not in text, "only the hash may be stored"
    assert hashlib.sha256(tok.encode()).hexdigest() in text.lower()
    assert text.split()[0] == "alice"
    # a second token: a new, different secret, appended
    tok2 = new_token(path, "bob", "--max-sessions", "3", "--priority", "low")
    assert tok2 != tok
    lines = [l for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert len(lines) == 2
    assert lines[1].split()[0] == "bob"
    assert "max_sessions=3" in lines[1] and "priority=low" in lines[1]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("args", [
    ["bad name"], ["x" * 65], ["ok", "--max-sessions", "-1"], ["ok", "--priority", "urgent"],
    ["ok", "--max-sessions", "many"],
])
def test_token_add_rejects_bad_input(tmp_path, args):
    path = tmp_path / "tokens"
    p = token_add(path, *args)
    assert p.returncode != 0
    assert p.stdout == "", "no token may be printed on failure"
    assert p.stderr.strip()
    assert not path.exists() or path.read_text().strip() == ""


def test_token_add_needs_tokens_option():
    p = subprocess.run([IC_BIN, "token", "add", "alice"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0 and "--tokens" in p.stderr and p.stdout == ""


# ------------------------------------------------------------------- AUTH

def test_auth_success(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        c = await connect(srv)
        assert c.hello["auth_required"] is True
        r = await c.request({"type": "AUTH", "token": toks["alice"], "id": "a"})
        model = r.pop("model")   # HELLO names no model before AUTH (issue 11)
        assert model["name"] and model["n_ctx_train"] > 0
        assert len(r.pop("models")) == 1   # nor the served models' names (issue 16)
        # With tokens required, a client without its own limit gets half of
        # the server's 8 sessions, so that one client cannot hold every slot.
        assert r == {"type": "AUTH_SUCCESS", "id": "a", "client": "alice", "max_sessions": 4}
        sid = await c.create_session()
        res = await c.infer(sid, "Once", max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        r = await c.request({"type": "AUTH", "token": toks["alice"]})
        assert r["type"] == "ERROR" and r["code"] == "bad_request", "AUTH twice"
        await c.close()
    run(body())


@pytest.mark.parametrize("token", ["wrong", "", "ic_" + "0" * 64])
def test_auth_failure_closes_with_4001(start_server, tmp_path, token):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        c = await connect(srv)
        r = await c.request({"type": "AUTH", "token": token, "id": 9})
        assert r["type"] == "AUTH_FAILED" and r["id"] == 9
        assert isinstance(r["reason"], str) and r["reason"]
        with pytest.raises(Closed) as ei:
            await c.recv(5)
        assert ei.value.code == 4001
    run(body())


def test_auth_token_wrong_type_is_bad_request(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        c = await connect(srv)
        r = await c.request({"type": "AUTH", "token": 12345})
        assert r["type"] == "ERROR" and r["code"] == "bad_request" and "token" in r["message"]
        r = await c.request({"type": "AUTH"})
        assert r["type"] == "ERROR" and r["code"] == "bad_request" and "token" in r["message"]
        # a malformed AUTH is not a failed attempt: the connection stays open
        r = await c.request({"type": "AUTH", "token": toks["alice"]})
        assert r["type"] == "AUTH_SUCCESS"
        await c.close()
    run(body())


def test_unauthenticated_before_auth(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        c = await connect(srv)
        for i, msg in enumerate([
                {"type": "CREATE_SESSION"},
                {"type": "INFER", "session_id": "s1", "prompt": "hi"},
                {"type": "ABORT", "session_id": "s1"},
                {"type": "CLOSE_SESSION", "session_id": "s1"},
                {"type": "METRICS"},
                {"type": "SUBSCRIBE_METRICS", "interval_ms": 250}]):
            r = await c.request({**msg, "id": i})
            assert r["type"] == "ERROR" and r["code"] == "unauthenticated", (msg, r)
            assert r["id"] == i
        await c.expect_silence(0.4)          # no METRICS pushes were set up
        r = await c.request({"type": "AUTH", "token": toks["alice"]})
        assert r["type"] == "AUTH_SUCCESS"
        await c.create_session()
        await c.close()
    run(body())


def test_open_server_accepts_auth(server):
    """Without --tokens an AUTH is still answered with success, so a client
    written for an authenticating server works unchanged (gateway.c says
    so: "An open server accepts any AUTH")."""
    async def body():
        c = await connect(server)
        assert c.hello["auth_required"] is False
        r = await c.request({"type": "AUTH", "token": "anything", "id": 1})
        assert r["type"] == "AUTH_SUCCESS", r
        await c.close()
    run(body())


# ------------------------------------------------------ per-client limits

def test_per_client_max_sessions_from_tokens_file(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",), ("bob", "--max-sessions", "2"))
    srv = _auth_server(start_server, path, toks, ["--max-sessions", 8,
                                                  "--max-sessions-per-client", 3])

    async def body():
        bob = await connect(srv, toks["bob"])
        assert bob.auth["client"] == "bob" and bob.auth["max_sessions"] == 2
        s1 = await bob.create_session()
        await bob.create_session()
        r = await bob.request({"type": "CREATE_SESSION", "id": "third"})
        assert r["type"] == "ERROR" and r["code"] == "session_limit", r
        assert r["id"] == "third"
        # the limit is per client, across its connections
        bob2 = await connect(srv, toks["bob"])
        r = await bob2.request({"type": "CREATE_SESSION"})
        assert r["code"] == "session_limit", r
        # alice has the server's per-client default
        alice = await connect(srv, toks["alice"])
        assert alice.auth["max_sessions"] == 3
        for _ in range(3):
            await alice.create_session()
        r = await alice.request({"type": "CREATE_SESSION"})
        assert r["code"] == "session_limit", r
        # closing frees a place
        r = await bob.request({"type": "CLOSE_SESSION", "session_id": s1})
        assert r["type"] == "SESSION_CLOSED"
        await bob2.create_session()
        for c in (bob, bob2, alice):
            await c.close()
    run(body())


def test_session_limit_freed_when_connection_closes(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("bob", "--max-sessions", "1"))
    srv = _auth_server(start_server, path, toks)

    async def body():
        a = await connect(srv, toks["bob"])
        await a.create_session()
        await a.close()
        b = await connect(srv, toks["bob"])
        deadline = time.monotonic() + 10
        while True:
            r = await b.request({"type": "CREATE_SESSION"})
            if r["type"] == "SESSION_CREATED":
                break
            assert r["code"] == "session_limit", r
            assert time.monotonic() < deadline, "the closed connection's session still counts"
            await asyncio.sleep(0.05)
        await b.close()
    run(body())


# ------------------------------------------------------------ SIGHUP

def test_sighup_reload_adds_client_and_keeps_connections(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        alice = await connect(srv, toks["alice"])
        sid = await alice.create_session()
        carol_tok = new_token(path, "carol", "--max-sessions", "1")
        srv.secrets.append(carol_tok)
        # not known before the reload
        pre = await connect(srv)
        r = await pre.request({"type": "AUTH", "token": carol_tok})
        assert r["type"] == "AUTH_FAILED"
        srv.proc.send_signal(signal.SIGHUP)
        await _wait_log(srv, "tokens reloaded")
        carol = await connect(srv, carol_tok)
        assert carol.auth["client"] == "carol" and carol.auth["max_sessions"] == 1
        # alice's connection and session survived the reload
        m = await alice.metrics()
        assert [s["session_id"] for s in m["sessions"]] == [sid]
        res = await alice.infer(sid, "Once", max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        for c in (alice, carol):
            await c.close()
    run(body())


def test_sighup_with_broken_file_keeps_old_tokens(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        with open(path, "a") as f:
            f.write("broken line without hash\n")
        srv.proc.send_signal(signal.SIGHUP)
        await _wait_log(srv, "reload failed")
        c = await connect(srv, toks["alice"])
        await c.create_session()
        await c.close()
    run(body())


def test_sighup_removed_client_cannot_auth_again(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",), ("bob",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        bob = await connect(srv, toks["bob"])
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(l for l in lines if not l.startswith("bob ")))
        srv.proc.send_signal(signal.SIGHUP)
        await _wait_log(srv, "tokens reloaded")
        c = await connect(srv)
        r = await c.request({"type": "AUTH", "token": toks["bob"]})
        assert r["type"] == "AUTH_FAILED"
        # bob's open connection goes too (issue 11: 4003, token revoked)
        m = await bob.recv(10)
        assert m["type"] == "ERROR" and m["code"] == "unauthenticated"
        with pytest.raises(Closed) as ei:
            await bob.recv(10)
        assert ei.value.code == 4003
    run(body())


# ------------------------------------------------------------ throttle

def test_failed_auth_is_throttled_per_network(start_server, tmp_path):
    """After 5 failures from a network the answers to its AUTHs are delayed;
    a correct token still gets in (test_hardening_auth.py has the rest)."""
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def attempt(token, local="127.0.0.1"):
        c = await connect(srv, local_addr=(local, 0))
        t0 = time.monotonic()
        r = await c.request({"type": "AUTH", "token": token})
        dt = time.monotonic() - t0
        if r["type"] == "AUTH_FAILED":
            with pytest.raises(Closed) as ei:
                await c.recv(5)
            assert ei.value.code == 4001
        else:
            await c.close()
        return r, dt

    async def body():
        for i in range(5):
            r, _ = await attempt(f"wrong-{i}")
            assert r["type"] == "AUTH_FAILED"
        r, dt = await attempt("wrong-5")
        assert r["type"] == "AUTH_FAILED" and "too many" in r["reason"], r
        assert dt >= 0.2, dt
        # the right token from the same address gets in, after a delay
        r, dt = await attempt(toks["alice"])
        assert r["type"] == "AUTH_SUCCESS", r
        assert 0.4 <= dt < 3, dt
        # another network is not affected
        r, dt = await attempt(toks["alice"], local="127.0.1.2")
        assert r["type"] == "AUTH_SUCCESS" and dt < 0.2, (r, dt)
    run(body())


def test_four_failures_do_not_lock_out(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks)

    async def body():
        for i in range(4):
            c = await connect(srv)
            r = await c.request({"type": "AUTH", "token": "nope"})
            assert r["type"] == "AUTH_FAILED"
        c = await connect(srv, toks["alice"])
        await c.close()
    run(body())


# ------------------------------------------------- bad tokens files

@pytest.mark.parametrize("bad_line", [
    "bob sha256:nothex",
    "bob",
    "b@d sha256:" + "a" * 64,
    "bob sha256:" + "b" * 64 + " max_sessions=0",
    "bob sha256:" + "b" * 64 + " colour=blue",
    "bob md5:" + "b" * 32,
])
def test_malformed_tokens_file_stops_startup(start_server, tmp_path, bad_line):
    path = tmp_path / "tokens"
    tok = new_token(path, "alice")              # line 1
    with open(path, "a") as f:
        f.write("# a comment\n")                # line 2
        f.write(bad_line + "\n")                # line 3
    srv = start_server(["--tokens", path], wait=False)
    srv.secrets.append(tok)
    srv.expect_exit = None
    rc = srv.wait_exit(30)
    assert rc != 0
    log = srv.stderr()
    assert f"{path}:3:" in log, log
    assert len([l for l in log.splitlines() if ":3:" in l]) == 1


def test_duplicate_hash_names_both_lines(start_server, tmp_path):
    path = tmp_path / "tokens"
    new_token(path, "alice")
    first = path.read_text().splitlines()[0]
    with open(path, "a") as f:
        f.write("\n")
        f.write("bob " + first.split()[1] + "\n")   # line 3 repeats line 1's hash
    srv = start_server(["--tokens", path], wait=False)
    srv.expect_exit = None
    assert srv.wait_exit(30) != 0
    log = srv.stderr()
    assert f"{path}:3:" in log and "1" in log.split(f"{path}:3:")[1].splitlines()[0]


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_missing_or_empty_tokens_file_stops_startup(start_server, tmp_path, content):
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    srv = start_server(["--tokens", path], wait=False)
    srv.expect_exit = None
    assert srv.wait_exit(30) != 0
    assert str(path) in srv.stderr()


# ------------------------------------------------------- secrets in logs

def test_tokens_and_prompts_never_logged(start_server, tmp_path):
    path, toks = _tokens(tmp_path, ("alice",))
    srv = _auth_server(start_server, path, toks, ["--log-level", "debug"])
    marker = "Zebra-quux-7781 prompt marker"
    wrong = "ic_" + "f" * 64
    srv.secrets.extend([marker, wrong, "sysmarker-4411"])

    async def body():
        c = await connect(srv, toks["alice"])
        sid = await c.create_session(system="sysmarker-4411")
        await c.infer(sid, marker, max_tokens=2, ignore_eos=True, **GREEDY)
        await c.send({"type": "INFER", "session_id": sid, "prompt": 5, "x": marker})
        await c.recv()
        await c.send('{"type":"INFER","prompt":"' + marker + '"')    # bad JSON
        await c.recv()
        await c.close()
        bad = await connect(srv)
        r = await bad.request({"type": "AUTH", "token": wrong})
        assert r["type"] == "AUTH_FAILED"
    run(body())
    log = srv.log()
    assert "authentication failed" in log     # the failure itself is logged, the token not
    for s in srv.secrets:
        assert s not in log
