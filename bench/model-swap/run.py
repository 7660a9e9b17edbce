#!/usr/bin/python3
"""bench/model-swap/run.py: what a model swap costs against a cold restart.

One server serves models A and B with --max-loaded-models 1. N sessions on
A each hold a context of about CTX tokens. Then:

  swap     one INFER on B (A goes to sleep, its sessions' KV to host
           memory; B loads), then one INFER on an A session (B sleeps, A
           loads and restores the N sessions' KV): the time to that first
           token, and the server's own "woke up in X ms" for A's load;
  cold     what the same needs without swapping: a fresh server with A
           alone (start to /health 200), then the N conversations
           recomputed (their contexts sent again) to the first token of
           the last.

    bench/model-swap/run.py [--a PATH] [--b PATH] [--sessions 1,4,8] [--ctx 256]
Prints a markdown table. Needs build/inferencecenter and build/test-models.
"""
import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("IC_BIN", str(ROOT / "build" / "inferencecenter"))
MODELS = ROOT / "build" / "test-models"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, threads):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="ic-swap-", suffix=".log", delete=False)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([BIN, "serve", "--port", str(self.port), "--threads",
                                      str(threads), *args], stdout=self.log, stderr=self.log)

    def wait_ready(self):
        while True:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - self.t0
            except OSError:
                pass
            time.sleep(0.01)

    def text(self):
        return Path(self.log.name).read_text("utf-8", "replace")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


async def ws(server):
    c = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws", max_size=None,
                                 ping_interval=None, compression=None)
    json.loads(await c.recv())  # HELLO
    return c


async def request(c, msg):
    await c.send(json.dumps(msg))
    return json.loads(await c.recv())


async def first_token(c, sid, prompt):
    """Seconds from INFER to its first TOKEN; the generation is then waited out."""
    t = time.monotonic()
    await c.send(json.dumps({"type": "INFER", "session_id": sid, "prompt": prompt, "raw": True,
                             "params": {"temperature": 0, "max_tokens": 2, "ignore_eos": True}}))
    ttft = None
    while True:
        m = json.loads(await c.recv())
        if m["type"] == "TOKEN" and ttft is None:
            ttft = time.monotonic() - t
        if m["type"] in ("END", "ERROR"):
            assert m["type"] == "END", m
            return ttft


def context(i, n_words):
    return " ".join(f"word{(i * 7 + k) % 97}" for k in range(n_words))


async def fill(server, model, n, n_words):
    c = await ws(server)
    sids = []
    for i in range(n):
        r = await request(c, {"type": "CREATE_SESSION", **({"model": model} if model else {})})
        assert r["type"] == "SESSION_CREATED", r
        sids.append(r["session_id"])
        await first_token(c, r["session_id"], context(i, n_words))
    return c, sids


async def swap_case(a, b, n, n_words, threads):
    name_b = Path(b).stem
    s = Server(["--model", a, "--model", b, "--max-loaded-models", "1", "--max-sessions",
                str(max(n, 2)), "--ctx-size", "2048"], threads)
    s.wait_ready()
    c, sids = await fill(s, None, n, n_words)
    cb, sb = await fill(s, name_b, 1, 8)          # A sleeps, B loads
    t_b = await first_token(cb, sb[0], " more")   # B warm
    t_swap = await first_token(c, sids[0], " more")  # B sleeps, A loads + restores n
    woke = [float(x) for x in re.findall(r"woke up in (\d+) ms: model \S+ reloaded, "
                                         rf"{n} sessions restored", s.text())]
    await c.close()
    await cb.close()
    s.stop()
    return t_swap, (woke[-1] / 1e3 if woke else float("nan")), t_b


async def cold_case(a, n, n_words, threads):
    s = Server(["--model", a, "--max-sessions", str(max(n, 2)), "--ctx-size", "2048"], threads)
    t_start = s.wait_ready()
    t = time.monotonic()
    c = await ws(s)
    ttft = []
    for i in range(n):
        r = await request(c, {"type": "CREATE_SESSION"})
        ttft.append(await first_token(c, r["session_id"], context(i, n_words) + " more"))
    t_recompute = time.monotonic() - t
    await c.close()
    s.stop()
    return t_start, t_recompute


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", default=str(MODELS / "vocab-qwen2.gguf"))
    ap.add_argument("--b", default=str(MODELS / "vocab-llama-bpe.gguf"))
    ap.add_argument("--sessions", default="1,4,8")
    ap.add_argument("--words", type=int, default=150, help="context words per session")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"A = {args.a} ({os.path.getsize(args.a) >> 20} MiB), "
          f"B = {args.b} ({os.path.getsize(args.b) >> 20} MiB), {args.words} words of context "
          f"per session, --threads {args.threads}\n")
    print("| sessions | first token on A after a swap | A's load (server log) | "
          "cold restart to /health | + recompute N contexts | cold total |")
    print("|---|---|---|---|---|---|")
    for n in map(int, args.sessions.split(",")):
        t_swap, t_load, _ = asyncio.run(swap_case(args.a, args.b, n, args.words, args.threads))
        t_start, t_rec = asyncio.run(cold_case(args.a, n, args.words, args.threads))
        print(f"| {n} | {t_swap * 1e3:.0f} ms | {t_load * 1e3:.0f} ms | {t_start * 1e3:.0f} ms "
              f"| {t_rec * 1e3:.0f} ms | {(t_start + t_rec) * 1e3:.0f} ms |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
