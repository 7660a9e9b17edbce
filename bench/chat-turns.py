#!/usr/bin/python3
"""TTFT of turns 2..5 of a 5-turn chat, with and without KV reuse.

  bench/chat-turns.py --model M.gguf [--bin build/inferencecenter] [--turns 5]

Three runs of the same conversation (greedy, 16 tokens a turn, a system
prompt of a few hundred tokens), each on a fresh server:
  ws       one WebSocket chat-mode session: each turn decodes only what the
           KV cache lacks (END stats.ttft_ms, prompt_tokens of context_tokens)
  oai      the OpenAI API (the whole conversation each turn), prompt cache on
  oai-nc   the same with --prompt-cache 0: every turn decodes everything
The OpenAI TTFT is measured by the client (first content chunk of a stream).
Prints one line per turn and run; numbers depend on the machine's load.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import websockets

SYSTEM = ("You are a careful assistant for a small shop that sells tea, coffee and "
          "spices. " * 12).strip()
TURNS = ["Hello, what do you sell?", "Which teas do you have?", "And coffee?",
         "What spices are popular?", "Thanks, goodbye."]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, model, extra=()):
    port = free_port()
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", str(port), "--threads",
                          os.environ.get("IC_THREADS", "2"), *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p, port
        except Exception:
            time.sleep(0.1)
    p.kill()
    sys.exit("server did not start")


async def ws_run(port, turns):
    out = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        json.loads(await ws.recv())  # HELLO
        await ws.send(json.dumps({"type": "CREATE_SESSION", "system": SYSTEM}))
        sid = json.loads(await ws.recv())["session_id"]
        for prompt in TURNS[:turns]:
            await ws.send(json.dumps({"type": "INFER", "session_id": sid, "prompt": prompt,
                                      "params": {"temperature": 0, "max_tokens": 16}}))
            while True:
                m = json.loads(await ws.recv())
                if m["type"] == "END":
                    st = m["stats"]
                    out.append((st["ttft_ms"], st["prompt_tokens"], st["context_tokens"]))
                    break
                if m["type"] == "ERROR":
                    sys.exit(f"ERROR {m}")
    return out


def oai_run(port, turns):
    msgs = [{"role": "system", "content": SYSTEM}]
    out = []
    for prompt in TURNS[:turns]:
        msgs.append({"role": "user", "content": prompt})
        body = json.dumps({"messages": msgs, "temperature": 0, "max_tokens": 16, "stream": True,
                           "stream_options": {"include_usage": True}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"content-type": "application/json"})
        t0 = time.perf_counter()
        ttft, text, usage = None, "", None
        with urllib.request.urlopen(req) as r:
            for line in r:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                ch = json.loads(line[6:])
                if ch.get("usage"):
                    usage = ch["usage"]
                for c in ch["choices"]:
                    piece = c["delta"].get("content")
                    if piece and ttft is None:
                        ttft = (time.perf_counter() - t0) * 1e3
                    text += piece or ""
        msgs.append({"role": "assistant", "content": text})
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        out.append((ttft or float("nan"), usage["prompt_tokens"] - cached, usage["prompt_tokens"]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default="build/inferencecenter")
    ap.add_argument("--turns", type=int, default=5)
    a = ap.parse_args()
    runs = {}
    for name, extra in [("ws", ()), ("oai", ()), ("oai-nc", ("--prompt-cache", "0"))]:
        p, port = start(a.bin, a.model, extra)
        try:
            runs[name] = (asyncio.run(ws_run(port, a.turns)) if name == "ws"
                          else oai_run(port, a.turns))
        finally:
            p.terminate()
            p.wait()
    print(f"model {os.path.basename(a.model)}, threads {os.environ.get('IC_THREADS', '2')}")
    print("turn  " + "  ".join(f"{n:>24}" for n in runs))
    print("      " + "  ".join(f"{'ttft_ms decoded/ctx':>24}" for _ in runs))
    for t in range(a.turns):
        cells = [f"{r[t][0]:9.1f} {r[t][1]:6d}/{r[t][2]:<6d}" for r in runs.values()]
        print(f"{t + 1:4d}  " + "  ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
