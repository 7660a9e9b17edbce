#!/usr/bin/env python3
"""TTFT of the first turn after a durable-session resume (issue 17), by
where the KV cache comes from, for a conversation of about N tokens; and
the store's write cost per turn.

  IC_BIN=build/inferencecenter /usr/bin/python3 bench/durable/resume_ttft.py \
      --model MODEL.gguf [--tokens 1500] [--threads 2] [--reps 3]

Scenarios (each on a fresh session whose first turn fills the context):
  unbroken   the same connection's next turn (KV in the cells)
  cells      another connection resumes it while the first still holds it
  ram        the connection drops (no close frame); resume: KV state from host memory
  disk       the same with --session-ram 0: KV state written to DIR/<id>.kv, read back
  restart    kill -9, start again on the store, resume: recomputed from the conversation
Prints one line per scenario: the median END stats.ttft_ms and the client's
time from RESUME_SESSION to the first TOKEN.
"""
import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
from conftest import Server, connect  # noqa: E402

P = {"temperature": 0, "ignore_eos": True}


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line.startswith("inferencecenter_session") or line.startswith(
                    "inferencecenter_sessions "):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out


async def fill(srv, words):
    c = await connect(srv)
    r = await c.request({"type": "CREATE_SESSION"})
    sid, token = r["session_id"], r["resume_token"]
    res = await c.infer(sid, words, raw=True, max_tokens=8, timeout=600, **P)
    assert res.error is None, res.error
    return c, sid, token, res.end["stats"]["prompt_tokens"] + res.end["stats"]["generated_tokens"]


async def timed_turn(c, sid, t0=None):
    t0 = t0 or time.monotonic()
    await c.start_infer(sid, " and", raw=True, max_tokens=4, **P)
    first = None
    while True:
        m = await c.recv(600)
        if m["type"] == "TOKEN" and first is None:
            first = time.monotonic()
        if m["type"] in ("END", "ERROR"):
            assert m["type"] == "END", m
            return m["stats"]["ttft_ms"], (first - t0) * 1e3


async def resume(c, sid, token):
    r = await c.request({"type": "RESUME_SESSION", "session_id": sid, "resume_token": token})
    assert r["type"] == "SESSION_RESUMED", r


async def wait_evicted(srv):
    for _ in range(2000):
        if scrape(srv.port).get("inferencecenter_sessions", 1) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not evicted")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="durable-bench-"))
    words = "Once upon a time" + " the cat ran" * (a.tokens // 3 - 2)
    results = {k: [] for k in ("unbroken", "cells", "ram", "disk", "restart")}
    n_ctx = 0

    def start(store, *extra, port=None):
        s = Server(work, model=a.model, threads=a.threads, port=port,
                   args=("--session-store", store, "--ctx-size", "2048", "--max-sessions", "2",
                         *extra))
        s.wait_ready(600)
        return s

    async def scen_main(srv):
        nonlocal n_ctx
        for _ in range(a.reps):
            c, sid, token, n_ctx = await fill(srv, words)
            results["unbroken"].append(await timed_turn(c, sid))
            await c.request({"type": "CLOSE_SESSION", "session_id": sid})
            c2, sid, token, _ = await fill(srv, words)
            d = await connect(srv)
            t0 = time.monotonic()
            await resume(d, sid, token)
            results["cells"].append(await timed_turn(d, sid, t0))
            await d.request({"type": "CLOSE_SESSION", "session_id": sid})
            await c2.close()
            await d.close()
            c, sid, token, _ = await fill(srv, words)
            c.ws.transport.abort()
            await wait_evicted(srv)
            d = await connect(srv)
            t0 = time.monotonic()
            await resume(d, sid, token)
            results["ram"].append(await timed_turn(d, sid, t0))
            await d.request({"type": "CLOSE_SESSION", "session_id": sid})
            await d.close()

    async def scen_recompute(srv):
        for _ in range(a.reps):
            c, sid, token, _ = await fill(srv, words)
            c.ws.transport.abort()
            await wait_evicted(srv)
            d = await connect(srv)
            t0 = time.monotonic()
            await resume(d, sid, token)
            results["disk"].append(await timed_turn(d, sid, t0))
            await d.request({"type": "CLOSE_SESSION", "session_id": sid})
            await d.close()

    srv = start(work / "s1")
    try:
        asyncio.run(scen_main(srv))
        m = scrape(srv.port)
    finally:
        srv.terminate(60)
        srv.close_files()
    srv = start(work / "s2", "--session-ram", "0")
    try:
        asyncio.run(scen_recompute(srv))
    finally:
        srv.terminate(60)
        srv.close_files()
    for _ in range(a.reps):
        store = work / f"s3-{_}"
        srv = start(store)
        sid = token = None

        async def first():
            nonlocal sid, token
            c, sid, token, _n = await fill(srv, words)
            return c
        asyncio.run(first())
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(30)
        srv.close_files()
        srv = start(store)
        try:
            async def again():
                d = await connect(srv)
                t0 = time.monotonic()
                await resume(d, sid, token)
                results["restart"].append(await timed_turn(d, sid, t0))
                await d.close()
            asyncio.run(again())
        finally:
            srv.terminate(60)
            srv.close_files()
        size = os.path.getsize(store / f"{sid}.json")
    n = m["inferencecenter_session_store_write_seconds_count"]
    print(f"conversation: {n_ctx} tokens in context before the measured turn; model {a.model}")
    for k, v in results.items():
        if v:
            print(f"{k:10s} ttft_ms median {statistics.median(x[0] for x in v):8.1f}   "
                  f"resume->first TOKEN ms median {statistics.median(x[1] for x in v):8.1f}   "
                  f"(n={len(v)})")
    print(f"store writes: {int(n)}, mean {m['inferencecenter_session_store_write_seconds_sum'] / n * 1e3:.2f} ms "
          f"per write; record of a {n_ctx}-token conversation: {size} bytes")
    print(json.dumps({k: v for k, v in results.items()}))


if __name__ == "__main__":
    main()
