#!/usr/bin/python3
"""bench/report.py: aggregates the JSON results of bench/run, prints the
tables, writes OUT/report.md and two PNGs per model (gnuplot).

    bench/report.py bench/out/20250101-120000

Reads OUT/meta.json and OUT/runs/*.json (one per run, each with a "bench"
block naming model, kind, target, N and repetition). Medians over the
repetitions, [min-max] beside them; a ratio's spread is the min-max of the
per-repetition ratios (ic and llama of the same repetition paired). Plots
go through gnuplot (pngcairo, else png) because it is a single small Debian
package with no Python dependencies; without it the report is written with
no plots.
"""

import collections
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys

TARGETS = {  # issue 7
    "steady": ("steady-state decode >= 0.97x ceiling (every N)", 0.97, ">="),
    "e2e": ("end-to-end agg tok/s >= 1.0x llama-server (every N)", 1.0, ">="),
    "itl": ("inter-token p95 <= 1.0x llama-server (every N)", 1.0, "<="),
    "shared": ("shared-prefix TTFT p50 <= 0.5x llama-server", 0.5, "<="),
    "mixed": ("mixed: short prompts' TTFT p95 <= 0.5x llama-server", 0.5, "<="),
    "idle": ("idle server: 0 CPU ticks", 0, "<="),
    "fail": ("no failed requests (ic)", 0, "<="),
}


# ---------------------------------------------------------------- data

def load(out):
    """{(model, kind, target, n): {rep: run}} and the meta block."""
    runs = collections.defaultdict(dict)
    for path in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        if path.endswith(".loadgen.json"):
            continue
        with open(path) as f:
            d = json.load(f)
        b = d.get("bench", {})
        if "model" not in b:  # a server that never came up
            name = os.path.basename(path)[:-5].split("-")
            b = {"model": name[0], "kind": name[1], "target": name[2], "n": int(name[3][1:]),
                 "rep": int(name[4][1:]), "error": b.get("error")}
            d["bench"] = b
        runs[(b["model"], b["kind"], b["target"], b["n"])][b["rep"]] = d
    meta = {}
    if os.path.exists(os.path.join(out, "meta.json")):
        with open(os.path.join(out, "meta.json")) as f:
            meta = json.load(f)
    return runs, meta


def dig(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def per_rep(runs, key, *path):
    """{rep: value} of summary.path for one (model, kind, target, n)."""
    out = {}
    for rep, d in runs.get(key, {}).items():
        v = dig(d.get("summary", {}), *path)
        if v is not None:
            out[rep] = v
    return out


def ratio_reps(a, b):
    return {r: a[r] / b[r] for r in a if r in b and b[r]}


def spread(vals):
    """(median, min, max) of a {rep: v} dict or list; None when empty."""
    v = list(vals.values()) if isinstance(vals, dict) else list(vals)
    if not v:
        return None
    return statistics.median(v), min(v), max(v)


def fmt(s, spec="%.1f", show_range=True):
    if s is None:
        return "-"
    med, lo, hi = s
    if not show_range or lo == hi:
        return spec % med
    return "%s [%s-%s]" % (spec % med, spec % lo, spec % hi)


def verdict(key, value):
    if value is None:
        return "n/a"
    _, limit, op = TARGETS[key]
    ok = value >= limit if op == ">=" else value <= limit
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------- tables

class Model:
    """Every figure of one model, computed once, for the tables and plots."""

    def __init__(self, runs, model):
        self.runs, self.model = runs, model
        self.ns = sorted({k[3] for k in runs if k[0] == model and k[1] == "load"})

    def v(self, kind, target, n, *path):
        return per_rep(self.runs, (self.model, kind, target, n), *path)

    def agg(self, t, n):
        return self.v("load", t, n, "agg_tok_s")

    def ceil(self, n):
        return self.v("ceiling", "ceiling", n, "ceiling", "S_TG")

    def lat(self, t, n, name, q):
        return spread(self.v("load", t, n, name, q))

    def failures(self, kind, t, n):
        return sum(self.v(kind, t, n, "failures").values())

    def main_table(self):
        head = ("| N | agg tok/s ic | llama | ceiling (S_TG) | ic/llama | ic/ceiling "
                "| TTFT p50 ms ic / llama | TTFT p95 ms ic / llama | ITL p50 ms ic / llama "
                "| ITL p95 ms ic / llama | steady ic/ceiling | failures ic/llama |")
        rows = [head, "|" + "---|" * 12]
        for n in self.ns:
            ic, ll, ce = self.agg("ic", n), self.agg("llama", n), self.ceil(n)
            steady = ratio_reps(self.v("load", "ic", n, "steady", "tok_s"), ce)
            cells = [str(n), fmt(spread(ic)), fmt(spread(ll)), fmt(spread(ce)),
                     fmt(spread(ratio_reps(ic, ll)), "%.2f"),
                     fmt(spread(ratio_reps(ic, ce)), "%.2f")]
            for name, q, spec in (("ttft_ms", "p50", "%.0f"), ("ttft_ms", "p95", "%.0f"),
                                  ("itl_ms", "p50", "%.2f"), ("itl_ms", "p95", "%.2f")):
                cells.append("%s / %s" % (fmt(self.lat("ic", n, name, q), spec, False),
                                          fmt(self.lat("llama", n, name, q), spec, False)))
            cells += [fmt(spread(steady), "%.3f"), "%d/%d" % (
                self.failures("load", "ic", n) + self.failures("seq", "ic", n),
                self.failures("load", "llama", n) + self.failures("seq", "llama", n))]
            rows.append("| " + " | ".join(cells) + " |")
        return rows

    def seq_table(self):
        rows = ["| N | ic: concurrent / sequential agg tok/s | llama: concurrent / sequential |",
                "|---|---|---|"]
        for n in self.ns:
            cells = []
            for t in ("ic", "llama"):
                sp = ratio_reps(self.agg(t, n), self.v("seq", t, n, "agg_tok_s"))
                cells.append(fmt(spread(sp), "%.2fx"))
            if any(c != "-" for c in cells):
                rows.append("| %d | %s | %s |" % (n, cells[0], cells[1]))
        return rows if len(rows) > 2 else []

    def cpu_table(self):
        """Server CPU seconds per generated token during the timed run."""
        rows = ["| N | ic ms CPU/token (network thread) | llama-server ms CPU/token "
                "| llama-batched-bench ms CPU/token | ic / batched-bench |", "|---|---|---|---|---|"]
        for n in self.ns:
            def per_tok(kind, t):
                out = {}
                for rep, d in self.runs.get((self.model, kind, t, n), {}).items():
                    s = d.get("summary", {})
                    cpu = dig(s, "server", "cpu_s") if kind == "load" else s.get("cpu_s")
                    if cpu is not None and s.get("generated_tokens"):
                        out[rep] = 1e3 * cpu / s["generated_tokens"]
                return out

            def net_tok():
                out = {}
                for rep, d in self.runs.get((self.model, "load", "ic", n), {}).items():
                    s = d.get("summary", {})
                    srv = s.get("server") or {}
                    main = [t["cpu_s"] for t in srv.get("threads", []) if t["tid"] == srv.get("pid")]
                    if main and s.get("generated_tokens"):
                        out[rep] = 1e3 * main[0] / s["generated_tokens"]
                return out
            ic, ce = per_tok("load", "ic"), per_tok("ceiling", "ceiling")
            rows.append("| %d | %s (%s) | %s | %s | %s |" % (
                n, fmt(spread(ic), "%.2f"), fmt(spread(net_tok()), "%.3f"),
                fmt(spread(per_tok("load", "llama")), "%.2f"), fmt(spread(ce), "%.2f"),
                fmt(spread(ratio_reps(ic, ce)), "%.2f")))
        return rows

    def scenario(self, kind, group, q):
        """(ic spread, llama spread, ratio spread) of a scenario's TTFT."""
        path = ("groups", group, "ttft_ms", q) if group else ("ttft_ms", q)
        ic, ll = self.v(kind, "ic", 4, *path), self.v(kind, "llama", 4, *path)
        return spread(ic), spread(ll), spread(ratio_reps(ic, ll))

    def resource(self, t):
        d = self.runs.get((self.model, "resource", t, 8), {}).get(0)
        return d and (d["bench"], d.get("summary", {}))

    def plot_data(self):
        """Rows for gnuplot: N, then med/min/max of ic, llama, ceiling agg,
        then p50/p95 TTFT and ITL of ic and llama (NaN where missing)."""
        lines = []
        for n in self.ns:
            row = [n]
            for vals in (self.agg("ic", n), self.agg("llama", n), self.ceil(n)):
                row += list(spread(vals) or (float("nan"),) * 3)
            for name in ("ttft_ms", "itl_ms"):
                for t in ("ic", "llama"):
                    for q in ("p50", "p95"):
                        s = self.lat(t, n, name, q)
                        row.append(s[0] if s else float("nan"))
            lines.append(" ".join(str(x) for x in row))
        return "\n".join(lines) + "\n"


def scenario_lines(m, targets):
    out = []
    for kind, group, q, key, what in (
            ("shared", None, "p50", "shared", "shared system prompt, N=4: TTFT p50"),
            ("mixed", "short", "p95", "mixed", "mixed load, 3 short prompts: TTFT p95")):
        ic, ll, r = m.scenario(kind, group, q)
        if ic is None and ll is None:
            continue
        ratio = r[0] if r else None
        targets.append((key, ratio, "%.2fx" % ratio if ratio is not None else "-"))
        out.append("- %s: ic %s ms, llama-server %s ms, ic/llama %s **%s**" % (
            what, fmt(ic, "%.0f"), fmt(ll, "%.0f"), fmt(r, "%.2f"), verdict(key, ratio)))
        if kind == "mixed":
            lic, lll, _ = m.scenario(kind, "long", "p50")
            delay = spread(m.v(kind, "ic", 4, "short_delay_ms"))
            out.append("  (the long prompt's own TTFT: ic %s ms, llama-server %s ms; the "
                       "short prompts start %s ms after it)" % (
                           fmt(lic, "%.0f"), fmt(lll, "%.0f"), fmt(delay, "%.0f")))
        for t in ("ic", "llama"):
            f = m.failures(kind, t, 4)
            if f:
                out.append("  %s failed requests: %d" % (t, f))
    return out


def resource_lines(m, targets):
    out = []
    for t, label in (("ic", "ic"), ("llama", "llama-server")):
        r = m.resource(t)
        if not r:
            continue
        meta, s = r
        idle = meta.get("idle") or {}
        if idle:
            line = "- idle %s: %d CPU ticks in %g s" % (label, idle["ticks"], idle["seconds"])
            if t == "ic":
                targets.append(("idle", idle["ticks"], "%d ticks" % idle["ticks"]))
                line += " **%s**" % verdict("idle", idle["ticks"])
            out.append(line)
        srv = s.get("server") or {}
        kv = meta.get("kv")
        if srv.get("rss_kb_idle") and kv:
            per = kv["kv_bytes_per_token"] * meta["ctx"]
            out.append("- RSS %s: %.1f MiB with 0 sessions, %.1f MiB with 8 open (after one "
                       "short turn each): +%.1f MiB; theoretical KV %.2f MiB per session "
                       "(%d layers x %d ctx x (%d+%d) x 2 bytes), x8 = %.1f MiB; model file "
                       "%.1f MiB" % (
                           label, srv["rss_kb_idle"] / 1024, (srv.get("rss_kb_open") or 0) / 1024,
                           ((srv.get("rss_kb_open") or 0) - srv["rss_kb_idle"]) / 1024,
                           per / 2**20, kv["n_layer"], meta["ctx"], kv["n_embd_k_gqa"],
                           kv["n_embd_v_gqa"], 8 * per / 2**20, meta["model_bytes"] / 2**20))
    return out


def model_report(runs, model):
    m = Model(runs, model)
    targets = []
    lines = ["## %s" % model, ""]
    lines += m.main_table()
    worst = {}
    for n in m.ns:
        ce = m.ceil(n)
        for key, vals in (("steady", ratio_reps(m.v("load", "ic", n, "steady", "tok_s"), ce)),
                          ("e2e", ratio_reps(m.agg("ic", n), m.agg("llama", n))),
                          ("itl", ratio_reps(m.v("load", "ic", n, "itl_ms", "p95"),
                                             m.v("load", "llama", n, "itl_ms", "p95")))):
            s = spread(vals)
            if s is None:
                continue
            _, _, op = TARGETS[key]
            if key not in worst or (s[0] < worst[key][0] if op == ">=" else s[0] > worst[key][0]):
                worst[key] = (s[0], n)
    for key in ("steady", "e2e", "itl"):
        if key in worst:
            targets.append((key, worst[key][0], "worst %.2fx at N=%d" % worst[key]))
    lines += ["", "Sequential baseline (the same N requests one after another on the same "
              "server; speedup = concurrent / sequential aggregate tok/s):", ""]
    lines += m.seq_table() or ["(not run)"]
    lines += ["", "Server CPU per generated token (process utime+stime during the timed run, "
              "prefill included; batched-bench: the whole process):", ""]
    lines += m.cpu_table()
    lines += ["", "Scenarios and resources:", ""]
    lines += scenario_lines(m, targets) + resource_lines(m, targets)
    fails = sum(m.failures(k[1], "ic", k[3]) for k in runs if k[0] == model and k[2] == "ic")
    targets.append(("fail", fails, "%d failed" % fails))
    lines += ["", "Targets:", ""]
    for key, value, text in targets:
        lines.append("- %s: %s **%s**" % (TARGETS[key][0], text, verdict(key, value)))
    lines.append("")
    return lines, m


# ---------------------------------------------------------------- plots

def plot(out, m):
    """<model>-throughput.png and <model>-latency.png; returns the file names."""
    gp = shutil.which("gnuplot")
    if not gp or not m.ns:
        return []
    dat = os.path.join(out, "%s-plot.dat" % m.model)
    with open(dat, "w") as f:
        f.write(m.plot_data())
    terms = subprocess.run([gp, "-e", "set terminal"], capture_output=True, text=True)
    term = "pngcairo" if "pngcairo" in terms.stdout + terms.stderr else "png"
    tp, lp = "%s-throughput.png" % m.model, "%s-latency.png" % m.model
    xt = "set xtics (%s)\n" % ", ".join(str(n) for n in m.ns)
    script = (
        'set terminal %s size 900,600\nset datafile missing "nan"\nset grid\n' % term +
        'IC = "#9400d3"\nLL = "#009e73"\nCE = "#e69f00"\n' +
        'set key top left\nset xlabel "concurrent sessions N"\n' + xt +
        'set xrange [%g:%g]\n' % (min(m.ns) - 0.5, max(m.ns) + 0.5) +
        'set output "%s"\nset title "%s: aggregate generated tokens/s (median, min-max bars)"\n'
        % (os.path.join(out, tp), m.model) +
        'set ylabel "tokens/s"\nset yrange [0:*]\n'
        'plot "%s" using 1:2:3:4 with yerrorlines lw 2 lc rgb IC title "InferenceCenter", '
        '"" using 1:5:6:7 with yerrorlines lw 2 lc rgb LL title "llama-server", '
        '"" using 1:8:9:10 with yerrorlines lw 2 dt 2 lc rgb CE title "llama-batched-bench S_TG (ceiling)" noenhanced\n'
        % dat +
        'set output "%s"\nset multiplot layout 1,2 title "%s: latency (median of reps)"\n'
        % (os.path.join(out, lp), m.model) +
        'set logscale y\nset yrange [*:*]\nset ylabel "ms"\nset title "time to first token"\n'
        'plot "%s" using 1:11 w lp lw 2 lc rgb IC title "ic p50", "" using 1:12 w lp lw 2 dt 2 lc rgb IC '
        'title "ic p95", "" using 1:13 w lp lw 2 lc rgb LL title "llama p50", "" using 1:14 w lp lw 2 dt 2 lc rgb LL '
        'title "llama p95"\n' % dat +
        'set title "inter-token gap"\n'
        'plot "%s" using 1:15 w lp lw 2 lc rgb IC title "ic p50", "" using 1:16 w lp lw 2 dt 2 lc rgb IC '
        'title "ic p95", "" using 1:17 w lp lw 2 lc rgb LL title "llama p50", "" using 1:18 w lp lw 2 dt 2 lc rgb LL '
        'title "llama p95"\nunset multiplot\n' % dat)
    with open(os.path.join(out, "%s-plot.gp" % m.model), "w") as f:
        f.write(script)
    r = subprocess.run([gp], input=script, text=True, capture_output=True, timeout=60)
    if r.returncode != 0:
        print("gnuplot: %s" % r.stderr.strip(), file=sys.stderr)
        return []
    return [tp, lp]


# ---------------------------------------------------------------- main

def header(meta):
    a = meta.get("args", {})
    return ["# Benchmark report", "",
            "- date %s, git %s, machine: %s, %s cores, %s, kernel %s" % (
                meta.get("date"), meta.get("git"), meta.get("cpu"), meta.get("cores"),
                meta.get("mem"), meta.get("kernel")),
            "- command: `%s`" % " ".join(meta.get("argv", [])),
            "- P=%s prompt tokens, G=%s generated, %s threads, %s slots/sessions, ctx %s per "
            "session (scenarios: 2048), reps %s; llama.cpp %s" % (
                a.get("prompt_tokens"), a.get("gen"), a.get("threads"), meta.get("slots"),
                meta.get("ctx"), a.get("reps"), meta.get("llama_prefix")),
            "- agg = generated tokens / (first request sent .. last token); steady = tokens "
            "arriving between the last client's first token and the first client's last; "
            "TTFT and ITL measured on the client; medians over reps, [min-max]", ""]


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: bench/report.py OUT_DIR")
    out = sys.argv[1]
    runs, meta = load(out)
    lines = header(meta)
    for model in sorted({k[0] for k in runs}):
        body, m = model_report(runs, model)
        pngs = plot(out, m)
        lines += body + ["![%s](%s)" % (p, p) for p in pngs] + [""]
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    print("\nwritten: %s" % os.path.join(out, "report.md"))


if __name__ == "__main__":
    main()
