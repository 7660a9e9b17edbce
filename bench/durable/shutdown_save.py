#!/usr/bin/env python3
"""The KV saves of a graceful stop (issue 17): S durable sessions of about
N tokens each, held by their connections and idle, then SIGTERM; how long
the stop takes and what its log line says; then a restart on the same
store, where each one resumes (from disk) and its first turn's TTFT is
measured against a recompute (the same conversation after kill -9).

  IC_BIN=build/inferencecenter /usr/bin/python3 bench/durable/shutdown_save.py \
      --model MODEL.gguf [--sessions 4] [--tokens 1500] [--threads 2] [--stops sigterm,kill-9]

Prints the SIGTERM-to-exit time, the server's "shutdown: KV state of ..."
line, and per source the median END stats.ttft_ms and the client's time
from RESUME_SESSION to the first TOKEN.
"""
import argparse
import asyncio
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))
from conftest import Server, connect  # noqa: E402
from resume_ttft import fill, resume, scrape, timed_turn  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--stops", default="sigterm,kill-9", help="which stops to run")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="durable-stop-"))
    words = "Once upon a time" + " the cat ran" * (a.tokens // 3 - 2)

    def start(store):
        s = Server(work, model=a.model, threads=a.threads,
                   args=("--session-store", store, "--ctx-size", "2048",
                         "--max-sessions", str(a.sessions)))
        s.wait_ready(600)
        return s

    def held_sessions(srv):
        async def body():
            out = []
            for _ in range(a.sessions):
                c, sid, token, n = await fill(srv, words)
                out.append((c, sid, token, n))
            return out
        loop = asyncio.new_event_loop()
        return loop, loop.run_until_complete(body())

    def resumed(srv, pairs):
        async def body():
            d = await connect(srv)
            res = []
            for _c, sid, token, _n in pairs:
                t0 = time.monotonic()
                await resume(d, sid, token)
                res.append(await timed_turn(d, sid, t0))
            await d.close()
            return res
        return asyncio.run(body())

    results = {}
    for how in a.stops.split(","):
        store = work / how
        srv = start(store)
        loop, pairs = held_sessions(srv)   # the loop stays open: connections held
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        srv.proc.wait(120)
        stop_ms = (time.monotonic() - t0) * 1e3
        line = re.search(r"shutdown: KV state of .*", srv.log())
        srv.close_files()
        for c, *_ in pairs:             # the server is gone: so are they
            c.ws.transport.abort()
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()
        kv = sum(p.stat().st_size for p in store.glob("*.kv"))
        print(f"{how}: exit after {stop_ms:.0f} ms; {line.group(0) if line else 'no KV line'}; "
              f".kv files {kv / 1048576:.1f} MiB; {pairs[0][3]} tokens per session")
        srv = start(store)
        try:
            res = resumed(srv, pairs)
            m = scrape(srv.port)
        finally:
            srv.terminate(120)
            srv.close_files()
        src = {k: int(m[f'inferencecenter_session_restores_total{{from="{k}"}}'])
               for k in ("disk", "recompute")}
        results[how] = res
        print(f"{how}: restarted; restores {src}; ttft_ms median "
              f"{statistics.median(x[0] for x in res):.1f}, resume->first TOKEN ms median "
              f"{statistics.median(x[1] for x in res):.1f} (n={len(res)})")


if __name__ == "__main__":
    main()
