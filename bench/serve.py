#!/usr/bin/python3
"""bench/serve.py: InferenceCenter against llama-server in the terms of
`vllm bench serve`: TTFT, TPOT, ITL and end-to-end latency (E2EL) at
p50/p90/p99, request and output throughput, and goodput against stated SLOs,
with Poisson arrivals at a request rate or a fixed concurrency, both servers
measured the same way (streamed POST /v1/completions, or with --endpoint
chat /v1/chat/completions) and run alternately in one command; a markdown
table and gnuplot plots at the end.

    bench/serve.py --model tinyllama --request-rate 1,2,inf --num-prompts 24 \\
        --input-len 64 --output-len 32 --goodput ttft:2000 tpot:250
    bench/serve.py --model stories --max-concurrency 1,4,8 --num-prompts 32
    bench/serve.py --endpoint chat --max-concurrency 1,4,8 --multi-turn 8x5 --reps 2

Chat (--endpoint chat): each prompt is one user message, rendered by both
servers with the model's own template through llama.cpp's chat layer
(llama-server gets --jinja); TTFT counts from the first chunk with content,
not the role-only first delta. --multi-turn CxT adds a scenario: C clients
at once, each a T-turn chat that resends the whole conversation every turn
(the previous answer appended, then a new user message), reported by turn
index with usage.prompt_tokens_details.cached_tokens. Chats ban the byte
tokens (logit_bias -100) on both servers, so every answer is text that can
be sent back.

Definitions (as vLLM's benchmark_serving): TTFT = first streamed token -
send; E2EL = last chunk - send; TPOT = (E2EL - TTFT) / (output tokens - 1),
output tokens from the usage chunk; ITL = every gap between streamed
chunks; request throughput = completed requests / duration, output
throughput = output tokens / duration, duration = first send to last
completion; goodput = requests/s that met every SLO given with --goodput
(ttft:MS, tpot:MS, e2el:MS). --request-rate inf sends all prompts at once
(bounded by --max-concurrency when given). Arrivals are a Poisson process
(exponential gaps) with a fixed --seed, so both servers see the same
schedule and the same prompts.

Servers are started fresh for every run (bench/run's Server: free
loopback port, /health, SIGTERM), with the same threads, slots and
context. Extra server flags: --ic-args / --llama-args (e.g. --ic-args
"--cache-type-k q8_0 --cache-type-v q8_0" --llama-args "-ctk q8_0 -ctv q8_0 -fa on").
"""

import argparse
import asyncio
import datetime
import importlib.machinery
import importlib.util
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
import loadgen  # noqa: E402  (percentile, HttpConn, prompt text)


def load_run_module():
    """bench/run (no .py suffix) as a module, for its Server and model maker."""
    loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(BENCH, "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def log(msg):
    print("[serve] %s" % msg, flush=True)


# ---------------------------------------------------------------- one request

class Api:
    """The route and request body both servers get: streamed, greedy,
    exactly output_len tokens (ignore_eos), with the usage chunk. A
    completion's input is a prompt string, a chat's a list of messages.
    ban: token ids given logit_bias -100 (the same on both servers)."""

    def __init__(self, endpoint, output_len, ban=()):
        self.endpoint, self.output_len = endpoint, output_len
        self.path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        self.bias = {str(t): -100 for t in ban}

    def body(self, inp):
        body = {"max_tokens": self.output_len, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        body["messages" if self.endpoint == "chat" else "prompt"] = inp
        if self.bias:
            body["logit_bias"] = self.bias
        return body

    def text(self, choice):
        """A streamed choice's new text (a chat's role-only delta has none)."""
        if self.endpoint == "chat":
            return (choice.get("delta") or {}).get("content")
        return choice.get("text")


def new_rec(**extra):
    rec = {"t_send": None, "t_end": None, "chunks": [], "error": None, "output_tokens": None,
           "prompt_tokens": None, "cached_tokens": None, "text": []}
    rec.update(extra)
    return rec


async def one_request(url, api, inp, rec):
    """Streams one request of api into rec: send, the times of the chunks
    that carry text (TTFT counts from the first of them, not from a chat's
    role chunk), the text, usage."""
    conn = loadgen.HttpConn(url)
    try:
        await conn.open()
        req = conn.request_bytes("POST", api.path, api.body(inp))
        rec["t_send"] = time.perf_counter()
        conn.writer.write(req)
        status, headers = await conn.read_head()
        if status != 200:
            text = b"".join([c async for c in conn.body_chunks(headers)])
            rec["error"] = "HTTP %d: %s" % (status, text[:200].decode("utf-8", "replace"))
            return
        async for now, data in conn.sse_data(headers):
            if data == b"[DONE]":
                rec["t_end"] = now
                return
            ev = json.loads(data)
            if ev.get("error"):
                rec["error"] = json.dumps(ev["error"])[:200]
            if ev.get("usage"):
                u = ev["usage"]
                rec["output_tokens"] = u.get("completion_tokens")
                rec["prompt_tokens"] = u.get("prompt_tokens")
                rec["cached_tokens"] = (u.get("prompt_tokens_details") or {}).get(
                    "cached_tokens")
            for ch in ev.get("choices") or []:
                t = api.text(ch)
                if t:
                    rec["chunks"].append(now)
                    rec["text"].append(t)
        rec["error"] = rec["error"] or "stream ended without [DONE]"
    finally:
        conn.close()


def finish(rec, output_len):
    rec["text"] = "".join(rec["text"])
    ok = rec["error"] is None and rec["chunks"] and rec["t_end"] is not None
    if ok and rec["output_tokens"] is None:
        rec["output_tokens"] = len(rec["chunks"])
    if ok and rec["output_tokens"] != output_len:
        rec["error"] = "%s of %d tokens" % (rec["output_tokens"], output_len)
        ok = False
    rec["ok"] = bool(ok)
    if rec["ok"]:
        rec["ttft_ms"] = (rec["chunks"][0] - rec["t_send"]) * 1e3
        rec["e2el_ms"] = (rec["t_end"] - rec["t_send"]) * 1e3
        n = rec["output_tokens"]
        rec["tpot_ms"] = (rec["e2el_ms"] - rec["ttft_ms"]) / (n - 1) if n > 1 else None
        rec["itl_ms"] = [(b - a) * 1e3 for a, b in zip(rec["chunks"], rec["chunks"][1:])]


async def timed_request(url, api, inp, rec, timeout, sem=None):
    """one_request under a timeout (and a semaphore); a failure is recorded
    in rec, never raised, so it counts as one request and the run goes on."""
    try:
        if sem:
            async with sem:
                await asyncio.wait_for(one_request(url, api, inp, rec), timeout)
        else:
            await asyncio.wait_for(one_request(url, api, inp, rec), timeout)
    except Exception as e:
        rec["error"] = "%s: %s" % (type(e).__name__, e)
        rec["t_send"] = rec["t_send"] or time.perf_counter()
    finish(rec, api.output_len)


def rebase(records, t0):
    """Times relative to t0; returns the duration t0 .. last completion."""
    t1 = max([r["t_end"] for r in records if r["t_end"]] or [time.perf_counter()])
    for r in records:
        for k in ("t_send", "t_end"):
            if r[k] is not None:
                r[k] -= t0
        r["chunks"] = [c - t0 for c in r["chunks"]]
    return t1 - t0


# ---------------------------------------------------------------- one run

def arrival_gaps(n, rate, seed):
    """Seconds to wait before each request: exponential gaps (Poisson
    arrivals) at rate req/s; 0 for rate inf."""
    rng = random.Random(seed)
    return [0.0 if rate == float("inf") else rng.expovariate(rate) for _ in range(n)]


def prompts_for(n, input_words, seed):
    rng = random.Random(seed)
    return [loadgen.request_prompt(input_words, "%06x-%d" % (rng.getrandbits(24), i))
            for i in range(n)]


def inputs_for(api, prompts):
    """A completion's prompt, or a chat of one user message with that text."""
    if api.endpoint == "chat":
        return [[{"role": "user", "content": p.strip()}] for p in prompts]
    return prompts


async def run_load(url, api, inputs, rate, concurrency, seed, timeout):
    gaps = arrival_gaps(len(inputs), rate, seed)
    sem = asyncio.Semaphore(concurrency) if concurrency else None
    records, tasks = [], []
    t0 = time.perf_counter()
    for i, (inp, gap) in enumerate(zip(inputs, gaps)):
        if gap:
            await asyncio.sleep(gap)
        records.append(new_rec(index=i))
        tasks.append(asyncio.ensure_future(timed_request(url, api, inp, records[-1], timeout,
                                                         sem)))
    await asyncio.gather(*tasks)
    return records, rebase(records, t0)


async def run_chats(url, api, clients, turns, input_words, seed, timeout):
    """clients conversations at once, each turns turns long: every turn
    sends the whole conversation so far (as OpenAI clients do), a new user
    message of ~input_words words after the previous answer. A failed
    turn ends its conversation (its answer is not known)."""
    rng = random.Random(seed)
    tags = ["%06x-c%d" % (rng.getrandbits(24), c) for c in range(clients)]
    records = []

    async def chat(c):
        msgs = []
        for t in range(turns):
            msgs.append({"role": "user", "content": loadgen.request_prompt(
                input_words, "%s-t%d" % (tags[c], t)).strip()})
            rec = new_rec(client=c, turn=t)
            records.append(rec)
            await timed_request(url, api, list(msgs), rec, timeout)
            if not rec["ok"]:
                return
            msgs.append({"role": "assistant", "content": rec["text"]})

    t0 = time.perf_counter()
    await asyncio.gather(*[chat(c) for c in range(clients)])
    return records, rebase(records, t0)


def stats(vals):
    p = loadgen.percentile
    vals = [v for v in vals if v is not None]
    return {"mean": sum(vals) / len(vals) if vals else None, "p50": p(vals, 50),
            "p90": p(vals, 90), "p95": p(vals, 95), "p99": p(vals, 99), "n": len(vals)}


def summarize(records, duration, slo):
    ok = [r for r in records if r["ok"]]
    out_tok = sum(r["output_tokens"] for r in ok)

    def good(r):
        return all(r.get(k + "_ms") is not None and r[k + "_ms"] <= v for k, v in slo.items())
    n_good = sum(1 for r in ok if good(r))
    return {"requests": len(records), "completed": len(ok), "failed": len(records) - len(ok),
            "errors": sorted({r["error"] for r in records if r["error"]})[:3],
            "duration_s": duration, "output_tokens": out_tok,
            "request_throughput": len(ok) / duration if duration > 0 else None,
            "output_throughput": out_tok / duration if duration > 0 else None,
            "goodput": n_good / duration if duration > 0 and slo else None,
            "good_requests": n_good if slo else None,
            "ttft_ms": stats([r["ttft_ms"] for r in ok]),
            "tpot_ms": stats([r["tpot_ms"] for r in ok]),
            "itl_ms": stats([g for r in ok for g in r["itl_ms"]]),
            "e2el_ms": stats([r["e2el_ms"] for r in ok]),
            "prompt_tokens": stats([r["prompt_tokens"] for r in ok]),
            "cached_tokens": stats([r["cached_tokens"] for r in ok])}


def summarize_turns(records, duration, turns):
    """summarize() of the whole chat run, plus one per turn index."""
    s = summarize(records, duration, {})
    s["turns"] = [summarize([r for r in records if r["turn"] == t], duration, {})
                  for t in range(turns)]
    s["later"] = summarize([r for r in records if r["turn"] > 0], duration, {})
    return s


# ---------------------------------------------------------------- report

def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def table(results, slo):
    head = ("| load | server | done/sent | req/s | out tok/s | goodput req/s | TTFT p50/p90/p99 ms "
            "| TPOT p50/p90/p99 ms | ITL p50/p90/p99 ms | E2EL p50/p90/p99 ms |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for r in results:
        s = r["summary"]

        def ppp(k):
            return "/".join(fmt(s[k][q]) for q in ("p50", "p90", "p99"))
        rows.append("| %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s |" % (
            r["load"], r["target"], s["completed"], s["requests"],
            fmt(s["request_throughput"], "%.2f"), fmt(s["output_throughput"]),
            fmt(s["goodput"], "%.2f"), ppp("ttft_ms"), ppp("tpot_ms"), ppp("itl_ms"),
            ppp("e2el_ms")))
    slo_line = ("goodput SLOs: " + ", ".join("%s <= %g ms" % kv for kv in slo.items())) \
        if slo else "no SLOs given (--goodput): goodput not computed"
    return head + "\n".join(rows) + "\n\n" + slo_line + "\n"


def median(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    m = len(vals) // 2
    return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def ratio_cell(pairs):
    """ic/llama of each repetition's (ic, llama) values: median [min-max]."""
    rs = sorted(i / l for i, l in pairs if i is not None and l)
    if not rs:
        return "-"
    return "%.2fx" % median(rs) + (" [%.2f-%.2f]" % (rs[0], rs[-1]) if len(rs) > 1 else "")


def by_rep(results, load, pick):
    """{target: [pick(summary) per repetition]} and the (ic, llama) pairs."""
    vals = {}
    for r in results:
        if r["load"] == load:
            vals.setdefault(r["target"], {})[r["rep"]] = pick(r["summary"])
    ic, ll = vals.get("ic", {}), vals.get("llama", {})
    return ({t: list(v.values()) for t, v in vals.items()},
            [(ic[k], ll[k]) for k in sorted(ic) if k in ll])


def compare(results, loads):
    """One row per load: medians over repetitions, ic/llama per repetition."""
    head = ("| load | ic out tok/s | llama out tok/s | ic/llama tok/s | ic TTFT p50/p95 ms "
            "| llama TTFT p50/p95 ms | ic/llama TTFT p50 |\n|---|---|---|---|---|---|---|\n")
    rows = []
    for load in loads:
        tok, tok_pairs = by_rep(results, load, lambda s: s["output_throughput"])
        t50, t50_pairs = by_rep(results, load, lambda s: s["ttft_ms"]["p50"])
        t95, _ = by_rep(results, load, lambda s: s["ttft_ms"]["p95"])
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            load, fmt(median(tok.get("ic", []))), fmt(median(tok.get("llama", []))),
            ratio_cell(tok_pairs),
            *["%s/%s" % (fmt(median(t50.get(t, []))), fmt(median(t95.get(t, []))))
              for t in ("ic", "llama")], ratio_cell(t50_pairs)))
    return head + "\n".join(rows) + "\n"


def turn_table(results, load, turns):
    """The chat scenario by turn index: TTFT (medians over repetitions),
    ic/llama TTFT p50 per repetition, mean prompt and cached tokens."""
    head = ("| turn | ic TTFT p50/p95 ms | llama TTFT p50/p95 ms | ic/llama TTFT p50 "
            "| prompt tokens (mean) | ic cached tokens (mean) | llama cached tokens (mean) |\n"
            "|---|---|---|---|---|---|---|\n")
    rows = []
    for t in list(range(turns)) + ["later"]:
        def part(s, t=t):
            return s["later"] if t == "later" else s["turns"][t]
        t50, pairs = by_rep(results, load, lambda s: part(s)["ttft_ms"]["p50"])
        t95, _ = by_rep(results, load, lambda s: part(s)["ttft_ms"]["p95"])
        ptok, _ = by_rep(results, load, lambda s: part(s)["prompt_tokens"]["mean"])
        ctok, _ = by_rep(results, load, lambda s: part(s)["cached_tokens"]["mean"])
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            "2-%d" % turns if t == "later" else t + 1,
            *["%s/%s" % (fmt(median(t50.get(k, []))), fmt(median(t95.get(k, []))))
              for k in ("ic", "llama")], ratio_cell(pairs),
            fmt(median(ptok.get("ic", []) or ptok.get("llama", [])), "%.0f"),
            *[fmt(median(ctok.get(k, [])), "%.0f") for k in ("ic", "llama")]))
    return head + "\n".join(rows) + "\n"


def same_prompts(results):
    """How many requests got the same usage.prompt_tokens on both servers
    (same load, repetition and request): the check that both rendered and
    tokenised the same text. None when only one server ran."""
    key = {}
    for r in results:
        for rec in r["records"]:
            k = (r["load"], r["rep"], rec.get("index"), rec.get("client"), rec.get("turn"))
            key.setdefault(k, {})[r["target"]] = rec["prompt_tokens"]
    both = [v for v in key.values() if len(v) == 2 and None not in v.values()]
    return (sum(1 for v in both if v["ic"] == v["llama"]), len(both)) if both else None


def plot(out, results, loads):
    """serve-throughput.png (output tok/s and goodput per load) and
    serve-latency.png (TTFT, TPOT, E2EL p50 and p99 per load)."""
    gp = shutil.which("gnuplot")
    if not gp:
        log("gnuplot not installed: no plots (apt-get install gnuplot-nox)")
        return []
    dat = os.path.join(out, "serve-plot.dat")
    by = {(r["load"], r["target"]): r["summary"] for r in results}
    cols = []
    with open(dat, "w") as f:
        f.write("# i load | per target: out_tok_s goodput ttft50 ttft99 tpot50 tpot99 e2el50 e2el99\n")
        for i, load in enumerate(loads):
            row = [str(i), '"%s"' % load]
            for t in ("ic", "llama"):
                s = by.get((load, t))
                vals = [None] * 8 if not s else [
                    s["output_throughput"], s["goodput"], s["ttft_ms"]["p50"], s["ttft_ms"]["p99"],
                    s["tpot_ms"]["p50"], s["tpot_ms"]["p99"], s["e2el_ms"]["p50"],
                    s["e2el_ms"]["p99"]]
                row += ["nan" if v is None else "%.4f" % v for v in vals]
            f.write(" ".join(row) + "\n")
    cols = {"ic": 3, "llama": 11}
    terms = subprocess.run([gp, "-e", "set terminal"], capture_output=True, text=True)
    term = "pngcairo" if "pngcairo" in terms.stdout + terms.stderr else "png"
    tp, lp = os.path.join(out, "serve-throughput.png"), os.path.join(out, "serve-latency.png")
    s = ('set terminal %s size 1000,600\nset datafile missing "nan"\nset grid\nset key top left\n'
         'IC = "#9400d3"\nLL = "#009e73"\nset style data histograms\nset style fill solid 0.8\n'
         'set boxwidth 0.8\nset xtics rotate by -20\nset yrange [0:*]\n' % term)
    s += ('set output "%s"\nset multiplot layout 1,2 title "output throughput and goodput"\n'
          'set title "output tokens/s"\nplot "%s" using %d:xtic(2) lc rgb IC title "InferenceCenter", '
          '"" using %d lc rgb LL title "llama-server"\n'
          'set title "goodput (requests/s meeting every SLO)"\nplot "%s" using %d:xtic(2) lc rgb IC '
          'title "InferenceCenter", "" using %d lc rgb LL title "llama-server"\nunset multiplot\n'
          % (tp, dat, cols["ic"], cols["llama"], dat, cols["ic"] + 1, cols["llama"] + 1))
    s += 'set output "%s"\nset multiplot layout 1,3 title "latency p50 (solid) and p99 (light), ms"\n' % lp
    for name, off in (("TTFT", 2), ("TPOT", 4), ("E2EL", 6)):
        s += ('set title "%s"\nplot "%s" using %d:xtic(2) lc rgb IC title "ic p50", "" using %d '
              'lc rgb "#d8b0f0" title "ic p99", "" using %d lc rgb LL title "llama p50", "" using %d '
              'lc rgb "#a0e0c8" title "llama p99"\n'
              % (name, dat, cols["ic"] + off, cols["ic"] + off + 1, cols["llama"] + off,
                 cols["llama"] + off + 1))
    s += "unset multiplot\n"
    with open(os.path.join(out, "serve-plot.gp"), "w") as f:
        f.write(s)
    r = subprocess.run([gp], input=s, text=True, capture_output=True, timeout=60)
    if r.returncode != 0:
        log("gnuplot: %s" % r.stderr.strip())
        return []
    return [os.path.basename(tp), os.path.basename(lp)]


# ---------------------------------------------------------------- main

def parse_goodput(items):
    slo = {}
    for it in items or []:
        k, _, v = it.partition(":")
        if k not in ("ttft", "tpot", "e2el") or not v:
            sys.exit("bench/serve.py: --goodput takes ttft:MS, tpot:MS, e2el:MS, not %r" % it)
        slo[k] = float(v)
    return slo


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tinyllama", help="tinyllama, stories or a GGUF path")
    ap.add_argument("--targets", default="ic,llama", help="ic,llama (run alternately)")
    ap.add_argument("--endpoint", default="completions", choices=("completions", "chat"),
                    help="/v1/completions, or /v1/chat/completions (one user message)")
    ap.add_argument("--request-rate", default="", help="req/s list, Poisson arrivals; inf = all at once")
    ap.add_argument("--max-concurrency", default="",
                    help="fixed concurrency list (alone: rate inf with this many in flight)")
    ap.add_argument("--multi-turn", metavar="CxT",
                    help="with --endpoint chat: C clients at once, T turns each, every turn "
                    "resending the conversation (alone: only this scenario)")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=64, help="prompt words, about tokens")
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--goodput", nargs="*", metavar="KEY:MS", help="SLOs: ttft:MS tpot:MS e2el:MS")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; the order flips each one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=8, help="sessions / slots of both servers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ic-args", default="", help="extra inferencecenter serve flags")
    ap.add_argument("--llama-args", default="", help="extra llama-server flags")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request")
    ap.add_argument("--out", help="output folder (default bench/out/serve-<timestamp>)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()
    a.slo = parse_goodput(a.goodput)
    a.rates = [float(x) for x in a.request_rate.split(",") if x]
    a.concs = [int(x) for x in a.max_concurrency.split(",") if x]
    a.chats = None
    if a.multi_turn:
        c, _, t = a.multi_turn.partition("x")
        if a.endpoint != "chat" or not (c.isdigit() and t.isdigit() and int(c) and int(t)):
            ap.error("--multi-turn CxT (e.g. 8x5) needs --endpoint chat")
        a.chats = (int(c), int(t))
    if not a.rates and not a.concs and not a.chats:
        a.concs = [1, 4]
    a.out = os.path.abspath(a.out or os.path.join(
        BENCH, "out", "serve-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
    a.targets = [t for t in a.targets.split(",") if t]
    if set(a.targets) - {"ic", "llama"}:
        ap.error("--targets: ic and/or llama")
    return a


class Cfg:
    def __init__(self, a, prefix):
        self.build_dir, self.prefix, self.threads = a.build_dir, prefix, a.threads


def find_model(a, br, prefix):
    if a.model not in ("tinyllama", "stories"):
        return a.model
    models = br.find_models(argparse.Namespace(models=a.model, build_dir=a.build_dir), prefix)
    if a.model not in models:
        sys.exit("bench/serve.py: no model %s" % a.model)
    return models[a.model]


def context_size(a):
    """Cells per session: a prompt of twice the words (tokens per word and
    the template), all of a chat's turns when there is one."""
    turn = a.input_len * 2 + a.output_len + 32
    return max(512, -(-turn * (a.chats[1] if a.chats else 1) // 256) * 256)


def served_run(a, br, cfg, model, ctx, target, tag, api, body):
    """A fresh server for one run: warmed by one untimed 2-token request,
    then body(url). Returns the server's command and body's result."""
    srv = br.Server(cfg, target, model, ctx, os.path.join(a.out, "logs", tag + ".server.log"))
    srv.cmd += shlex.split(a.ic_args if target == "ic" else a.llama_args)
    if target == "llama" and api.endpoint == "chat":
        srv.cmd.append("--jinja")  # the model's template through the chat layer, as ic
    url = "http://127.0.0.1:%d" % srv.port
    warm_api = Api(api.endpoint, 2, [int(t) for t in api.bias])
    with srv:
        warm = [new_rec()]
        asyncio.run(timed_request(url, warm_api, inputs_for(api, [" warm up"])[0], warm[0],
                                  a.timeout))
        out = body(url)
    return shlex.join(srv.cmd), out


def main():
    a = parse_args()
    # SIGTERM unwinds, so the server of the run in progress is stopped too
    # (it runs in its own session, out of reach of a signal to our group).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    br = load_run_module()
    br.SLOTS = a.slots
    prefix = os.environ.get("LLAMA_PREFIX") or os.path.expanduser(
        "~/.cache/inferencecenter/llama-80fb11ac73e6-cpu")
    model = find_model(a, br, prefix)
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    cfg = Cfg(a, prefix)
    ctx = context_size(a)
    # A chat's replies go back as text; a lone byte token is not text (and
    # llama-server answers 500 on one), so chats ban them on both servers.
    api = Api(a.endpoint, a.output_len,
              loadgen.gguf_byte_tokens(model) if a.endpoint == "chat" else ())
    loads = [("rate %g" % r, r, c) for r in a.rates for c in (a.concs or [None])] if a.rates \
        else [("conc %d" % c, float("inf"), c) for c in a.concs]
    loads = [(name + (" conc %d" % c if a.rates and c else ""), r, c) for name, r, c in loads]
    chat_load = "chat %dx%d" % a.chats if a.chats else None
    inputs = inputs_for(api, prompts_for(a.num_prompts, a.input_len, a.seed))
    results = []
    for rep in range(a.reps):
        order = a.targets if rep % 2 == 0 else a.targets[::-1]
        runs = [(name, rate, conc) for name, rate, conc in loads] + \
            ([(chat_load, None, None)] if chat_load else [])
        for name, rate, conc in runs:
            for target in order:
                tag = "%s-%s-r%d" % (name.replace(" ", ""), target, rep)
                if name == chat_load:
                    cmd, (records, dur) = served_run(
                        a, br, cfg, model, ctx, target, tag, api, lambda url: asyncio.run(
                            run_chats(url, api, a.chats[0], a.chats[1], a.input_len,
                                      a.seed + rep, a.timeout)))
                    s = summarize_turns(records, dur, a.chats[1])
                else:
                    cmd, (records, dur) = served_run(
                        a, br, cfg, model, ctx, target, tag, api, lambda url: asyncio.run(
                            run_load(url, api, inputs, rate, conc, a.seed + rep, a.timeout)))
                    s = summarize(records, dur, a.slo)
                log("%s: %d/%d done, %.2f req/s, %.1f out tok/s, TTFT p50 %s ms, TPOT p50 %s ms%s"
                    % (tag, s["completed"], s["requests"], s["request_throughput"] or 0,
                       s["output_throughput"] or 0, fmt(s["ttft_ms"]["p50"]), fmt(s["tpot_ms"]["p50"]),
                       (" errors: %s" % s["errors"]) if s["errors"] else ""))
                res = {"load": name, "rate": rate if rate != float("inf") else "inf",
                       "max_concurrency": conc, "target": target, "rep": rep,
                       "endpoint": api.path, "server_cmd": cmd, "summary": s, "records": records}
                results.append(res)
                with open(os.path.join(a.out, tag + ".json"), "w") as f:
                    json.dump(res, f, indent=1)
    plots = plot(a.out, results, [l[0] for l in loads]) if loads else []
    md = ["# bench/serve.py", "", "`%s`" % shlex.join(sys.argv), "",
          "model %s, %s, %d prompts of ~%d words, %d output tokens, %d threads, %d slots, ctx %d%s"
          % (os.path.basename(model), api.path, a.num_prompts, a.input_len, a.output_len,
             a.threads, a.slots, ctx, ", %d byte tokens banned (logit_bias -100, both servers)"
             % len(api.bias) if api.bias else ""), "", table(results, a.slo)]
    md += ["Medians over %d repetition(s); ic/llama: median [min-max] of the "
           "repetitions' ratios." % a.reps, ""]
    if loads:
        md += [compare(results, [l[0] for l in loads])]
    if chat_load:
        md += ["%s: %d clients at once, %d turns each, every turn the whole conversation; "
               "p95 over a turn's %d requests is nearest rank (the worst)."
               % ((chat_load,) + a.chats + (a.chats[0],)), "",
               compare(results, [chat_load]), turn_table(results, chat_load, a.chats[1])]
    same = same_prompts(results)
    if same:
        md += ["usage.prompt_tokens equal on both servers (same rendering and tokens): "
               "%d of %d requests" % same, ""]
    md += ["![%s](%s)" % (p, p) for p in plots]
    with open(os.path.join(a.out, "serve.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    log("out: %s" % a.out)
    return 0 if all(r["summary"]["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
