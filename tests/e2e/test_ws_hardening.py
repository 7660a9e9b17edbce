"""WebSocket hardening (issue 11, the probing list and memory): frames the
websockets library will not send, over raw sockets; every protocol error
gets its RFC 6455 close code at once.
"""
import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import time

import pytest
import websockets

from conftest import IC_BIN, Closed, RawWS, connect

# ASan's quarantine keeps freed memory: RSS says nothing under it.
SANITIZED = "libasan" in subprocess.run(["ldd", IC_BIN], capture_output=True,
                                         text=True).stdout

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def close_code(raw, timeout=3):
    """Reads until the server's close frame; returns (code, reason, seconds)."""
    raw.sock.settimeout(timeout)
    t0 = time.monotonic()
    while True:
        op, payload = raw.recv_frame()
        if op == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            return code, payload[2:], time.monotonic() - t0


def opened(server):
    raw = RawWS(server.port)
    assert raw.recv_json()["type"] == "HELLO"
    return raw


def test_unmasked_frame_is_1002(server):
    raw = opened(server)
    payload = b'{"type":"METRICS"}'
    raw.sock.sendall(struct.pack("!BB", 0x81, len(payload)) + payload)
    code, _, dt = close_code(raw)
    assert code == 1002 and dt < 1
    raw.close()


def test_frame_announcing_2_to_62_bytes_is_1009_at_once(server):
    raw = opened(server)
    raw.sock.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 62) + os.urandom(4) + b"x" * 100)
    code, _, dt = close_code(raw)
    assert code == 1009 and dt < 1
    raw.close()


def test_top_bit_length_is_1002(server):
    raw = opened(server)
    raw.sock.sendall(struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 63) + os.urandom(4))
    assert close_code(raw)[0] == 1002
    raw.close()


def test_nothing_is_handled_after_a_too_large_message(server):
    """One write: a too-large frame, then a METRICS: only the ERROR and 1009."""
    raw = opened(server)
    big = RawWS.frame(0x1, b"x" * ((1 << 20) + 1))
    raw.sock.sendall(big + RawWS.frame(0x1, b'{"type":"METRICS","id":"after"}'))
    seen = []
    with pytest.raises(Closed) as e:
        while True:
            seen.append(raw.recv_json())
    assert e.value.code == 1009
    assert [m["type"] for m in seen] == ["ERROR"], seen
    raw.close()


@pytest.mark.parametrize("payload,want", [
    (struct.pack("!H", 1000) + b"\xff\xfe bad", 1007),
    (struct.pack("!H", 1000) + b"\xed\xa0\x80", 1007),   # a surrogate
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 1005), 1002),
    (b"\x03", 1002),
    (struct.pack("!H", 1000) + b"bye", 1000),
    (struct.pack("!H", 4001) + "ça va".encode(), 4001),
])
def test_close_frames_are_checked(server, payload, want):
    raw = opened(server)
    raw.send_frame(0x8, payload)
    code, reason, _ = close_code(raw)
    assert code == want
    if want in (1002, 1007):
        assert reason                                 # we say why
    raw.close()


def test_empty_close_is_answered_empty(server):
    raw = opened(server)
    raw.send_frame(0x8, b"")
    assert close_code(raw)[0] == 1005
    raw.close()


@pytest.mark.parametrize("frame", [
    bytes([0xC1, 0x80]) + b"\0\0\0\0",               # RSV1 without an extension
    bytes([0x83, 0x80]) + b"\0\0\0\0",               # reserved opcode 3
    bytes([0x80, 0x80]) + b"\0\0\0\0",               # continuation without a message
    bytes([0x09, 0x80]) + b"\0\0\0\0",               # fragmented ping
    bytes([0x89, 0x80 | 126, 0, 126]) + b"\0\0\0\0" + b"\0" * 126,   # long ping
])
def test_malformed_frames_are_1002(server, frame):
    raw = opened(server)
    raw.sock.sendall(frame)
    code, _, dt = close_code(raw)
    assert code == 1002 and dt < 1
    raw.close()


def test_new_message_inside_a_fragmented_one_is_1002(server):
    raw = opened(server)
    raw.send_frame(0x1, b'{"type":', fin=False)
    raw.send_frame(0x1, b'"METRICS"}')
    assert close_code(raw)[0] == 1002
    raw.close()


def test_ping_is_answered_with_its_payload(server):
    raw = opened(server)
    raw.send_frame(0x9, b"hello")
    op, payload = raw.recv_frame()
    assert op == 0xA and payload == b"hello"
    raw.close()


def handshake(port, extra=b"", version=b"13", key=None):
    key = key if key is not None else base64.b64encode(os.urandom(16))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
              b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: %s\r\n"
              b"Sec-WebSocket-Version: %s\r\n%s\r\n" % (port, key, version, extra))
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, "closed without an answer"
        buf += chunk
    head = buf.split(b"\r\n\r\n")[0].decode()
    s.close()
    return head, key


def test_foreign_subprotocol_is_accepted_without_choosing_one(server):
    head, key = handshake(server.port, b"Sec-WebSocket-Protocol: chat, superchat\r\n")
    assert head.startswith("HTTP/1.1 101")
    assert "sec-websocket-protocol" not in head.lower()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
    assert f"Sec-WebSocket-Accept: {accept}" in head


def test_our_subprotocol_is_chosen(server):
    head, _ = handshake(server.port, b"Sec-WebSocket-Protocol: chat, inferencecenter\r\n")
    assert head.startswith("HTTP/1.1 101")
    assert "Sec-WebSocket-Protocol: inferencecenter" in head


def test_websockets_client_with_a_foreign_subprotocol_works(server):
    async def body():
        async with websockets.connect(server.ws_url, subprotocols=["chat"]) as ws:
            assert json.loads(await ws.recv())["type"] == "HELLO"
            assert ws.subprotocol is None
    asyncio.run(body())


def test_bad_version_is_426_and_bad_key_is_400(server):
    head, _ = handshake(server.port, version=b"8")
    assert head.startswith("HTTP/1.1 426") and "Sec-WebSocket-Version: 13" in head
    head, _ = handshake(server.port, key=b"short")
    assert head.startswith("HTTP/1.1 400")


def test_idle_connection_after_a_1mib_message_gives_its_memory_back(server):
    """The receive buffer shrinks after each message (it held +723 kB)."""
    pad = "p" * 1_000_000
    msg = json.dumps({"type": "METRICS", "id": "big", "pad": pad}).encode()
    warm = opened(server)
    warm.send_text(msg)
    assert warm.recv_json()["type"] == "METRICS"
    time.sleep(0.2)
    rss0 = server.rss_kb()
    conns = []
    for _ in range(20):
        raw = opened(server)
        raw.send_text(msg)
        r = raw.recv_json()
        assert r["type"] == "METRICS" and r["id"] == "big"
        conns.append(raw)
    time.sleep(1.5)                             # the heap is trimmed within a second
    per_conn = (server.rss_kb() - rss0) / 20
    print(f"RSS per idle connection after one 1 MiB message: {per_conn:.0f} kB")
    if not SANITIZED:
        assert per_conn < 100, per_conn
    for raw in conns + [warm]:
        raw.close()


def test_unfinished_fragmented_messages_are_bounded_by_the_limit(server):
    """A fragment past max_message_bytes closes the connection at once
    (1009) instead of buffering it."""
    raw = opened(server)
    raw.send_frame(0x1, b"a" * 600_000, fin=False)
    raw.send_frame(0x0, b"a" * 600_000, fin=False)
    assert close_code(raw)[0] == 1009
    raw.close()


def test_session_still_usable_after_protocol_probes(server):
    async def body():
        c = await connect(server)
        r = await c.request({"type": "METRICS", "id": "m"})
        assert r["type"] == "METRICS"
        await c.close()
    for frame in (bytes([0x81, 0x05]) + b"hello", bytes([0xC1, 0x80]) + b"\0\0\0\0"):
        raw = opened(server)
        raw.sock.sendall(frame)
        assert close_code(raw)[0] == 1002
        raw.close()
    asyncio.run(body())
