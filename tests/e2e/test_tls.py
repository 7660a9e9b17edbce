"""TLS on the server's own port (serve --tls-cert FILE --tls-key FILE):
https:// and wss:// through libwebsockets' OpenSSL support on our raw
sockets, with self-signed certificates the test makes with `openssl`.

Covers: /health over https, a WebSocket session over wss (greedy text as
on a plain server), a streamed OpenAI answer over https, no plain HTTP on
the TLS port, SIGHUP picking up a renewed certificate while connections
stay up (and a bad renewal keeping the old one), and start-up refusing a
key that does not match its certificate.
"""
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest
import websockets

from conftest import HAVE_STORIES, IC_BIN, MODEL, STORY_12, free_port, run

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def make_cert(d, name):
    """A self-signed certificate for 127.0.0.1 (CN=name): (cert, key) paths."""
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    p = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return cert, key


def trusting(*certs):
    """A client context that trusts exactly these certificates."""
    ctx = ssl.create_default_context()
    for c in certs:
        ctx.load_verify_locations(cafile=str(c))
    return ctx


def peer_cn(port, ctx):
    """The CN of the certificate the server presents to a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


def https_get(port, path, ctx):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_log(server, needle, timeout=10):
    deadline = time.monotonic() + timeout
    while needle not in server.log():
        assert time.monotonic() < deadline, f"{needle!r} not logged:\n{server.log()}"
        time.sleep(0.05)


@pytest.fixture
def tls_server(start_server, tmp_path):
    if not os.path.exists(OPENSSL):
        pytest.fail("openssl is not installed (Debian package openssl)")
    cert, key = make_cert(tmp_path, "ic-test-a")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(cert, live_cert)
    shutil.copy(key, live_key)
    s = start_server(args=("--tls-cert", live_cert, "--tls-key", live_key), wait=False)
    ctx = trusting(cert)
    deadline = time.monotonic() + 30
    while True:
        try:
            if https_get(s.port, "/health", ctx)[0] == 200:
                break
        except OSError:
            pass
        assert s.proc.poll() is None and time.monotonic() < deadline, s.log()
        time.sleep(0.05)
    return s, ctx, cert, (live_cert, live_key)


def test_https_and_wss_on_one_port(tls_server):
    s, ctx, _, _ = tls_server
    status, body = https_get(s.port, "/health", ctx)
    assert (status, json.loads(body)["status"]) == (200, "ok")
    assert "listening on wss://127.0.0.1:" in s.log()

    async def body_():
        async with websockets.connect(f"wss://127.0.0.1:{s.port}/ws", ssl=ctx,
                                      compression=None, ping_interval=None) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "HELLO"
            await ws.send(json.dumps({"type": "CREATE_SESSION"}))
            sid = json.loads(await ws.recv())["session_id"]
            await ws.send(json.dumps({"type": "INFER", "session_id": sid, "raw": True,
                                      "prompt": "Once upon a time",
                                      "params": {"temperature": 0, "max_tokens": 12}}))
            text = ""
            while (m := json.loads(await ws.recv()))["type"] == "TOKEN":
                text += m["text"]
            assert m["type"] == "END", m
            if HAVE_STORIES:
                assert text == STORY_12
            else:
                assert text
    run(body_())


def test_streamed_openai_answer_over_https(tls_server):
    s, ctx, _, _ = tls_server
    c = http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=30)
    c.request("POST", "/v1/completions",
              body=json.dumps({"prompt": "Once upon a time", "max_tokens": 8,
                               "temperature": 0, "stream": True}),
              headers={"content-type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    data = r.read().decode()
    c.close()
    events = [ln[6:] for ln in data.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]", data
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text and (not HAVE_STORIES or STORY_12.startswith(text)), text


def test_plain_http_on_the_tls_port_gets_nothing(tls_server):
    s, ctx, _, _ = tls_server
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = b""
        try:
            while chunk := raw.recv(4096):
                got += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    assert b"HTTP/1.1 200" not in got and b'"ok"' not in got, got
    assert https_get(s.port, "/health", ctx)[0] == 200    # and it still serves TLS


def test_sighup_reloads_a_renewed_certificate(tls_server, tmp_path):
    s, ctx_a, cert_a, (live_cert, live_key) = tls_server
    cert_b, key_b = make_cert(tmp_path, "ic-test-b")
    both = trusting(cert_a, cert_b)
    assert peer_cn(s.port, both) == "ic-test-a"

    async def body_():
        async with websockets.connect(f"wss://127.0.0.1:{s.port}/ws", ssl=both,
                                      compression=None, ping_interval=None) as ws:
            assert json.loads(await ws.recv())["type"] == "HELLO"
            # The renewal lands the way certbot's deploy hooks do: new files
            # renamed over the old, then SIGHUP.
            for src, dst in ((cert_b, live_cert), (key_b, live_key)):
                tmp = dst.with_suffix(".new")
                shutil.copy(src, tmp)
                os.replace(tmp, dst)
            s.proc.send_signal(signal.SIGHUP)
            wait_log(s, "TLS certificate reloaded: /CN=ic-test-b")
            assert peer_cn(s.port, both) == "ic-test-b"
            # The connection made before the renewal goes on.
            await ws.send(json.dumps({"type": "METRICS"}))
            assert json.loads(await ws.recv())["type"] == "METRICS"
            # A broken renewal (a key that is not the certificate's) is
            # refused; the server keeps serving with the pair it has.
            shutil.copy(cert_a, live_cert)
            s.proc.send_signal(signal.SIGHUP)
            wait_log(s, "TLS reload failed, keeping the previous certificate")
            assert peer_cn(s.port, both) == "ic-test-b"
            await ws.send(json.dumps({"type": "METRICS"}))
            assert json.loads(await ws.recv())["type"] == "METRICS"
    run(body_())


def test_mismatched_key_or_half_a_pair_refuses_to_start(tmp_path):
    cert_a, _ = make_cert(tmp_path, "ic-test-a")
    _, key_b = make_cert(tmp_path, "ic-test-b")
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--port", str(free_port()), "--tls-cert",
                        str(cert_a), "--tls-key", str(key_b)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "does not belong to the certificate" in p.stderr, p.stderr
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--tls-cert", str(cert_a)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--tls-cert and --tls-key go together" in p.stderr, p.stderr
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--port", str(free_port()), "--tls-cert",
                        str(tmp_path / "missing.crt"), "--tls-key", str(key_b)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "cannot read the certificate" in p.stderr, p.stderr
