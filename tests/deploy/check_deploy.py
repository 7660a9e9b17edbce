#!/usr/bin/env python3
"""check_deploy.py - checks the operator files under deploy/.

    check_deploy.py systemd --bin BUILT_BINARY   systemd-analyze verify the unit
    check_deploy.py config --bin BUILT_BINARY    example config <-> `serve --help`
    check_deploy.py prometheus                   promtool: rules, rule tests, config
    check_deploy.py grafana                      dashboard JSON and its queries
    check_deploy.py docker                       Dockerfiles, .dockerignore, bootstrap
    check_deploy.py options --bin BUILT_BINARY   docs/options.md <-> the option table
    check_deploy.py haproxy                      haproxy -c on deploy/haproxy/haproxy.cfg

Run by CTest (tests/CMakeLists.txt: deploy_*), one subcommand per test, in
its own process. Exits 0 when every check passes, 1 with a list of what
failed, 2 on bad usage. A missing tool (systemd-analyze, promtool) is a
failure, not a skip: CI installs them (Debian packages systemd, prometheus).

METRICS below is the contract between the server's GET /metrics and the
dashboard and alerts: every metric name they use must be in it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
HERE = os.path.dirname(os.path.abspath(__file__))

COUNTERS = {
    "inferencecenter_generations_total", "inferencecenter_prompt_tokens_total",
    "inferencecenter_generated_tokens_total", "inferencecenter_auth_failures_total",
    "inferencecenter_errors_total", "inferencecenter_scheduler_steps_total",
    "inferencecenter_session_resumes_total", "inferencecenter_session_restores_total",
    "inferencecenter_session_store_write_errors_total",
}
GAUGES = {
    "inferencecenter_sessions", "inferencecenter_sessions_max",
    "inferencecenter_generations_running", "inferencecenter_queue_depth",
    "inferencecenter_kv_cells_used", "inferencecenter_kv_cells_capacity",
    "inferencecenter_gpu_layers", "inferencecenter_state",
    "inferencecenter_websocket_connections", "inferencecenter_scheduler_stalled",
    "inferencecenter_build_info",
    "inferencecenter_gpu_temperature_celsius", "inferencecenter_gpu_memory_used_bytes",
    "inferencecenter_gpu_memory_total_bytes", "inferencecenter_gpu_utilization_ratio",
    "inferencecenter_gpu_power_watts",
    "inferencecenter_cpu_usage_ratio", "inferencecenter_ram_used_bytes",
    "inferencecenter_ram_total_bytes",
    "inferencecenter_sessions_parked", "inferencecenter_sessions_stored",
    "inferencecenter_session_store_bytes", "inferencecenter_session_ram_bytes",
    "inferencecenter_session_store_queue",
}
HISTOGRAMS = {
    "inferencecenter_queue_time_seconds", "inferencecenter_time_to_first_token_seconds",
    "inferencecenter_inter_token_latency_seconds", "inferencecenter_request_duration_seconds",
    "inferencecenter_session_store_write_seconds",
}
METRICS = (COUNTERS | GAUGES
           | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
           | {"up"})  # Prometheus' own scrape-health series

# Metrics the dashboard must show (the panels the operators asked for).
DASHBOARD_MUST_SHOW = (COUNTERS - {"inferencecenter_auth_failures_total",
                                   "inferencecenter_scheduler_steps_total"}) | {
    "inferencecenter_sessions", "inferencecenter_sessions_max",
    "inferencecenter_generations_running", "inferencecenter_queue_depth",
    "inferencecenter_kv_cells_used", "inferencecenter_kv_cells_capacity",
    "inferencecenter_state", "inferencecenter_gpu_temperature_celsius",
    "inferencecenter_gpu_memory_used_bytes", "inferencecenter_gpu_memory_total_bytes",
    "inferencecenter_gpu_power_watts", "inferencecenter_gpu_utilization_ratio",
    "inferencecenter_sessions_parked", "inferencecenter_sessions_stored",
    "inferencecenter_session_store_bytes", "inferencecenter_session_ram_bytes",
    "inferencecenter_session_store_queue",
} | {h + "_bucket" for h in HISTOGRAMS}

ALERTS = {"InferenceCenterDown", "GPUHot", "VRAMNearlyFull", "QueueGrowing",
          "HighErrorRate", "SchedulerStalled", "Throttled"}

# PromQL words that are not metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "atan2",
}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("ok: " + msg)


def need_tool(name):
    path = shutil.which(name)
    if not path:
        fail(f"{name} not found on PATH: install it (Debian package "
             f"{ {'systemd-analyze': 'systemd', 'haproxy': 'haproxy'}.get(name, 'prometheus')}); "
             "this check does not skip")
    return path


def run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, **kw)
    return p.returncode, p.stdout


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def metric_names(expr):
    """The metric names an expression selects: identifiers left once strings,
    label matchers, ranges, grouping clauses, function calls and keywords are
    taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)          # Grafana variables
    names = set()
    for tok in re.findall(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if tok.lower() not in PROMQL_WORDS and not re.fullmatch(r"[0-9a-fA-FxXeE]+", tok):
            names.add(tok)
    return names


def check_names(where, exprs):
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        if not names:
            fail(f"{where}: no metric in expression {expr!r}")
        for n in sorted(names - METRICS):
            fail(f"{where}: {n!r} is not a metric the server exports (in {expr!r})")
        used |= names
    return used


# --- systemd ------------------------------------------------------------------

UNIT_MUST = [
    "Type=notify", "NotifyAccess=main",
    "ExecStart=/usr/local/bin/inferencecenter serve --config /etc/inferencecenter/inferencecenter.conf",
    "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30", "TimeoutStopSec=30",
    "Restart=on-failure", "DynamicUser=yes", "StateDirectory=inferencecenter",
    "CacheDirectory=inferencecenter", "ConfigurationDirectory=inferencecenter",
    "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
    "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectControlGroups=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "LockPersonality=yes",
    "RestrictRealtime=yes", "SystemCallArchitectures=native", "DevicePolicy=closed",
    "DeviceAllow=char-nvidia-frontend rw", "DeviceAllow=char-nvidia-uvm rw",
    "DeviceAllow=/dev/nvidiactl rw", "DeviceAllow=/dev/nvidia-uvm rw",
    "DeviceAllow=/dev/nvidia-uvm-tools rw", "SupplementaryGroups=video render",
]


def unit_settings(text):
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.lstrip().startswith(("#", ";"))]


def check_systemd(binary):
    unit_path = os.path.join(DEPLOY, "inferencecenter.service")
    text = read(unit_path)
    settings = unit_settings(text)
    for s in UNIT_MUST:
        if s not in settings:
            fail(f"unit lacks `{s}`")
    if any(s.startswith("MemoryDenyWriteExecute=") for s in settings):
        fail("unit sets MemoryDenyWriteExecute= (CUDA's JIT needs W+X memory)")
    for key, least in (("TimeoutStartSec", 300), ("LimitNOFILE", 4096)):
        vals = [s.split("=", 1)[1] for s in settings if s.startswith(key + "=")]
        if not vals or not vals[-1].isdigit() or int(vals[-1]) < least:
            fail(f"unit: {key} must be at least {least} (got {vals})")
    if not any(s in ("KillMode=mixed", "KillMode=main") for s in settings):
        fail("unit: KillMode must be mixed or main")
    if not failures:
        ok("unit has every required setting")

    tool = need_tool("systemd-analyze")
    if not tool:
        return
    if not (binary and os.access(binary, os.X_OK)):
        fail(f"--bin {binary!r} is not an executable (the built inferencecenter)")
        return
    # verify needs ExecStart's binary to exist: point it at the build's.
    lines = text.splitlines()
    n = 0
    for i, ln in enumerate(lines):
        if ln.startswith("ExecStart=/usr/local/bin/inferencecenter "):
            lines[i] = ln.replace("/usr/local/bin/inferencecenter", os.path.abspath(binary), 1)
            n += 1
    if n != 1:
        fail(f"expected one ExecStart=/usr/local/bin/inferencecenter line, found {n}")
        return
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "inferencecenter.service")
        with open(copy, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        rc, out = run([tool, "verify", "--man=no", copy],
                      env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""))
    ours = [ln for ln in out.splitlines() if "inferencecenter" in ln]
    others = [ln for ln in out.splitlines() if ln.strip() and "inferencecenter" not in ln]
    for ln in others:
        print("  (not ours, ignored) " + ln)
    if rc != 0 or ours:
        fail(f"systemd-analyze verify (rc {rc}) complains about our unit:\n  "
             + "\n  ".join(ours or out.splitlines()))
    else:
        ok("systemd-analyze verify: no warnings for inferencecenter.service")
    check_rpc_unit(tool)


def check_rpc_unit(tool):
    """deploy/systemd/ggml-rpc-server@.service: binds loopback by default,
    restarts, sandboxed, and systemd-analyze verify has nothing to say
    about an instance of it (ExecStart pointed at a stand-in binary)."""
    path = os.path.join(DEPLOY, "systemd", "ggml-rpc-server@.service")
    text = read(path)
    settings = unit_settings(text)
    for s in ("Environment=RPC_HOST=127.0.0.1", "Restart=always", "DynamicUser=yes",
              "NoNewPrivileges=yes", "ProtectSystem=strict"):
        if s not in settings:
            fail(f"ggml-rpc-server@.service lacks `{s}`")
    if "NO AUTHENTICATION" not in text:
        fail("ggml-rpc-server@.service must warn that RPC has no authentication")
    with tempfile.TemporaryDirectory() as d:
        stand_in = os.path.join(d, "ggml-rpc-server")
        with open(stand_in, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(stand_in, 0o755)
        copy = os.path.join(d, "ggml-rpc-server@50052.service")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(text.replace("/usr/local/bin/ggml-rpc-server", stand_in))
        rc, out = run([tool, "verify", "--man=no", copy],
                      env=dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER=""))
    ours = [ln for ln in out.splitlines() if "ggml-rpc-server" in ln]
    if rc != 0 or ours:
        fail(f"systemd-analyze verify (rc {rc}) complains about ggml-rpc-server@.service:\n  "
             + "\n  ".join(ours or out.splitlines()))
    else:
        ok("systemd-analyze verify: no warnings for ggml-rpc-server@50052.service")


# --- example config -----------------------------------------------------------

def check_config(binary):
    text = read(os.path.join(DEPLOY, "inferencecenter.conf"))
    keys = []
    for ln in text.splitlines():
        m = re.match(r"^[#;]\s*([a-z][a-z0-9-]*)\s*=\s*(\S.*)$", ln)
        if m:
            keys.append(m.group(1))
        elif re.match(r"^\s*[a-z][a-z0-9-]*\s*=", ln):
            fail(f"example config sets a key (all must be commented out): {ln!r}")
    if len(keys) != len(set(keys)):
        fail(f"example config repeats keys: {sorted(k for k in keys if keys.count(k) > 1)}")
    if not (binary and os.access(binary, os.X_OK)):
        fail(f"--bin {binary!r} is not an executable (the built inferencecenter)")
        return
    rc, out = run([binary, "serve", "--help"])
    flags = set(re.findall(r"--([a-z][a-z0-9-]+)", out))
    if rc != 0 or "config" not in flags:
        fail(f"`inferencecenter serve --help` failed or has no --config (rc {rc})")
        return
    for k in keys:
        if k not in flags:
            fail(f"example config key {k!r} is not a serve option (--{k} not in --help)")
    for f in sorted(flags - set(keys) - {"help", "config"}):
        fail(f"serve option --{f} is missing from deploy/inferencecenter.conf")
    if not failures:
        ok(f"example config: {len(keys)} keys, one per serve option")


# --- Prometheus ---------------------------------------------------------------

def rule_exprs(text):
    """expr values of a rules file, folded block scalars (>-, |) included;
    enough YAML for our own file, without needing python3-yaml."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, val = len(m.group(1)), m.group(2).strip()
        if val in ("|", "|-", ">", ">-"):
            block = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            val = " ".join(b for b in block if b)
        out.append(val.strip("'\""))
    return out


def check_prometheus():
    tool = need_tool("promtool")
    alerts = os.path.join(DEPLOY, "prometheus", "alerts.yml")
    text = read(alerts)
    names = set(re.findall(r"^\s*-\s*alert:\s*(\S+)", text, re.M))
    for a in sorted(ALERTS - names):
        fail(f"alerts.yml lacks alert {a}")
    exprs = rule_exprs(text)
    if len(exprs) < len(ALERTS):
        fail(f"alerts.yml: found {len(exprs)} expr lines, expected at least {len(ALERTS)}")
    check_names("alerts.yml", exprs)
    for a in ("summary", "description"):
        if text.count(a + ":") < len(re.findall(r"^\s*-\s*alert:", text, re.M)):
            fail(f"alerts.yml: not every alert has a {a} annotation")
    if not tool:
        return
    rc, out = run([tool, "check", "rules", alerts])
    print(out.rstrip())
    if rc != 0:
        fail("promtool check rules alerts.yml")
    rc, out = run([tool, "test", "rules", os.path.join(HERE, "alerts_test.yml")])
    print(out.rstrip())
    if rc != 0:
        fail("promtool test rules tests/deploy/alerts_test.yml")
    with tempfile.TemporaryDirectory() as d:
        conf = read(os.path.join(DEPLOY, "prometheus", "prometheus.yml"))
        if not re.search(r"^\s*-\s*alerts\.yml\s*$", conf, re.M):
            fail("prometheus.yml does not load alerts.yml in rule_files")
        for needle in ("job_name: inferencecenter", "127.0.0.1:8765", "metrics_path: /metrics"):
            if needle not in conf:
                fail(f"prometheus.yml lacks {needle!r}")
        conf = re.sub(r"^(\s*-\s*)alerts\.yml\s*$", r"\g<1>" + alerts, conf, flags=re.M)
        path = os.path.join(d, "prometheus.yml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(conf)
        rc, out = run([tool, "check", "config", path])
        print(out.rstrip())
        if rc != 0:
            fail("promtool check config prometheus.yml (rule_files -> alerts.yml)")
    if not failures:
        ok("alerts.yml and prometheus.yml")


# --- Grafana ------------------------------------------------------------------

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def check_grafana():
    path = os.path.join(DEPLOY, "grafana", "inferencecenter.json")
    try:
        dash = json.loads(read(path))
    except ValueError as e:
        fail(f"{path}: not valid JSON: {e}")
        return
    if dash.get("title") != "InferenceCenter" or not dash.get("uid"):
        fail("dashboard needs title 'InferenceCenter' and a uid")
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail(f"schemaVersion {dash.get('schemaVersion')!r}: want 36 or later")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("DS_PROMETHEUS")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard needs a datasource variable DS_PROMETHEUS (query: prometheus)")
    panels = [p for p in all_panels(dash.get("panels", [])) if p.get("type") != "row"]
    if len(panels) < 15:
        fail(f"dashboard has {len(panels)} panels, expected at least 15")
    exprs, ids = [], set()
    for p in panels:
        title = p.get("title", "?")
        if p.get("id") in ids:
            fail(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        targets = p.get("targets") or []
        if not targets:
            fail(f"panel {title!r} has no queries")
        for t in targets + [p]:
            uid = (t.get("datasource") or {}).get("uid")
            if uid != "${DS_PROMETHEUS}":
                fail(f"panel {title!r}: datasource uid {uid!r}, want ${{DS_PROMETHEUS}}")
        for t in targets:
            if not t.get("expr"):
                fail(f"panel {title!r}: a query without expr")
            else:
                exprs.append(t["expr"])
    used = check_names("dashboard", exprs)
    for m in sorted(DASHBOARD_MUST_SHOW - used):
        fail(f"dashboard shows nothing of {m}")
    for h in ("inferencecenter_time_to_first_token_seconds",
              "inferencecenter_inter_token_latency_seconds"):
        for q in ("0.5", "0.95", "0.99"):
            if not any(re.search(rf"histogram_quantile\(\s*{q}\s*,.*rate\({h}_bucket", e)
                       for e in exprs):
                fail(f"dashboard lacks histogram_quantile({q}, rate({h}_bucket...))")
    for h in ("inferencecenter_request_duration_seconds", "inferencecenter_queue_time_seconds"):
        if not any(re.search(rf"histogram_quantile\(\s*0\.95\s*,.*rate\({h}_bucket", e)
                   for e in exprs):
            fail(f"dashboard lacks the p95 of {h}")
    # PromQL syntax: the queries, with Grafana's variables filled in, as
    # recording rules for promtool.
    tool = need_tool("promtool")
    if tool and exprs:
        with tempfile.TemporaryDirectory() as d:
            rules = os.path.join(d, "dashboard-rules.yml")
            with open(rules, "w", encoding="utf-8") as f:
                f.write("groups:\n  - name: dashboard\n    rules:\n")
                for i, e in enumerate(exprs):
                    e = (e.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                          .replace("$instance", ".*"))
                    f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
            rc, out = run([tool, "check", "rules", rules])
            if rc != 0:
                fail("dashboard queries are not valid PromQL:\n" + out)
    if not failures:
        ok(f"dashboard: {len(panels)} panels, {len(exprs)} queries, all valid PromQL "
           "on exported metrics")


# --- Docker -------------------------------------------------------------------

def bootstrap_packages():
    text = read(os.path.join(ROOT, "scripts", "bootstrap"))
    m = re.search(r"local pkgs=\(([^)]*)\)", text)
    return set(m.group(1).split()) if m else set()


def check_docker():
    files = {"Dockerfile": os.path.join(DEPLOY, "docker", "Dockerfile"),
             "Dockerfile.cuda": os.path.join(DEPLOY, "docker", "Dockerfile.cuda")}
    bootstrap = read(os.path.join(ROOT, "scripts", "bootstrap"))
    env_vars = set(re.findall(r"\$\{?(IC_[A-Z_]+)", bootstrap))
    for name, path in files.items():
        text = read(path)
        if "scripts/bootstrap" not in text:
            fail(f"{name} does not run scripts/bootstrap")
        for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, re.M):
            if src != "." and not os.path.exists(os.path.join(ROOT, src)):
                fail(f"{name}: COPY {src}: no such path in the repository")
        for ref in set(re.findall(r"(?<![\w/$])((?:scripts|deploy|tools|src)/[\w./-]+)", text)):
            if not os.path.exists(os.path.join(ROOT, ref.rstrip("."))):
                fail(f"{name} names {ref}, which is not in the repository")
        # Any IC_* it hands the bootstrap must be one the bootstrap reads.
        for v in set(re.findall(r"\b(IC_[A-Z_]+)=", text)) - {"IC_VOCAB_GGUF"}:
            if v not in env_vars:
                fail(f"{name} sets {v}, which scripts/bootstrap does not read")
        for needle in ("EXPOSE 8765", "HEALTHCHECK", "/health",
                       '"serve", "--host", "0.0.0.0"', "IC_CACHE_DIR="):
            if needle not in text:
                fail(f"{name} lacks {needle!r}")
    cuda = read(files["Dockerfile.cuda"])
    if not re.search(r"\bIC_CUDA=1\b", cuda) or "ARG IC_CUDA_ARCHS" not in cuda:
        fail("Dockerfile.cuda must run bootstrap with IC_CUDA=1 and take ARG IC_CUDA_ARCHS")
    if not re.search(r"FROM nvidia/cuda:\S*-devel-", cuda) or \
            not re.search(r"FROM nvidia/cuda:\S*-runtime-", cuda):
        fail("Dockerfile.cuda must build on a nvidia/cuda devel image, run on a runtime one")
    if "debian:bookworm" not in read(files["Dockerfile"]):
        fail("Dockerfile must be based on debian:bookworm")
    ignore = read(os.path.join(ROOT, ".dockerignore")).split()
    for pat in (".git", "build*/"):
        if pat not in ignore:
            fail(f".dockerignore lacks {pat}")
    # The image builds with what scripts/bootstrap installs: every library
    # CMake asks pkg-config for must come from a package on its list.
    pkgs = bootstrap_packages()
    cmake = read(os.path.join(ROOT, "CMakeLists.txt")) + read(os.path.join(ROOT, "tests", "CMakeLists.txt"))
    for mod in sorted(set(re.findall(r"pkg_check_modules\(\s*\w+\s+REQUIRED\s+(?:IMPORTED_TARGET\s+)?([\w.+-]+)", cmake))):
        rc, pcdir = run(["pkg-config", "--variable=pcfiledir", mod])
        owner = ""
        if rc == 0:
            rc2, out = run(["dpkg", "-S", os.path.join(pcdir.strip(), mod + ".pc")])
            owner = out.split(":", 1)[0] if rc2 == 0 else ""
        if not owner:
            print(f"  (cannot tell which package has {mod}.pc here; not checked)")
        elif owner not in pkgs:
            fail(f"CMake needs {mod} ({owner}), which scripts/bootstrap does not install: "
                 "the Docker build (and CI) would fail")
    # runtime-deps.sh on the binary CTest built: it must name real packages.
    binary = os.environ.get("IC_BIN")
    if binary and os.access(binary, os.X_OK) and shutil.which("dpkg"):
        rc, out = run([os.path.join(DEPLOY, "docker", "runtime-deps.sh"), binary])
        got = set(out.split())
        if rc != 0 or not {"libjansson4", "libc6"} <= got:
            fail(f"runtime-deps.sh {binary}: rc {rc}, output {out!r}")
        else:
            ok(f"runtime-deps.sh finds {len(got)} packages for the built binary")
    if not failures:
        ok("Dockerfiles, .dockerignore and the bootstrap agree")


OPTIONS_BEGIN = "<!-- options:begin -->"
OPTIONS_END = "<!-- options:end -->"


def check_options(binary):
    """docs/options.md holds, between its markers, exactly what the option
    table prints (`serve --help-markdown`); scripts/gen-docs rewrites it."""
    rc, out = run([binary, "serve", "--help-markdown"])
    if rc != 0 or "| flag |" not in out:
        fail(f"`serve --help-markdown` failed (rc {rc})")
        return
    doc = read(os.path.join(ROOT, "docs", "options.md"))
    if OPTIONS_BEGIN not in doc or OPTIONS_END not in doc:
        fail("docs/options.md lacks its option markers")
        return
    got = doc.split(OPTIONS_BEGIN, 1)[1].split(OPTIONS_END, 1)[0].strip()
    if got != out.strip():
        fail("docs/options.md's option list differs from the option table: run scripts/gen-docs")
    else:
        n = sum(1 for line in out.splitlines() if line.startswith("| `"))
        ok(f"docs/options.md lists the {n} serve options of the table")


def check_haproxy():
    """deploy/haproxy/haproxy.cfg passes `haproxy -c` as committed, with the
    variables set as a deployment (and the e2e test) sets them and with none
    (the defaults); each server's agent port is the port of its address; the
    same replicas r1..r3 serve both back ends, each with the health check and
    the agent on /health/weight."""
    tool = need_tool("haproxy")
    cfg = os.path.join(DEPLOY, "haproxy", "haproxy.cfg")
    text = read(cfg)
    if not tool:
        return
    env = {**os.environ, "IC_FRONT_HOST": "127.0.0.1", "IC_FRONT_PORT": "18000"}
    for i in (1, 2, 3):
        env[f"IC_REPLICA{i}"] = f"127.0.0.{i}:{18000 + i}"
        env[f"IC_REPLICA{i}_PORT"] = str(18000 + i)
    bare = {k: v for k, v in os.environ.items() if not k.startswith("IC_")}
    for what, e in (("with the variables set", env), ("with the defaults", bare)):
        rc, out = run([tool, "-c", "-f", cfg], env=e)
        if rc != 0 or "Configuration file is valid" not in out:
            fail(f"haproxy -c {what}: rc {rc}\n{out}")
        else:
            ok(f"haproxy -c passes {what}")
    servers = re.findall(r'^\s*server\s+(\S+)\s+"\$\{IC_REPLICA(\d)-[^:]+:(\d+)\}"(.*)$', text, re.M)
    by_backend = re.split(r"^backend\s+", text, flags=re.M)[1:]
    if len(by_backend) != 2 or len(servers) != 6:
        fail(f"expected two back ends with three servers each, found {len(by_backend)} "
             f"back ends, {len(servers)} servers")
    for name, n, port, rest in servers:
        if name != f"r{n}":
            fail(f"server {name} takes IC_REPLICA{n}: server names are the node names r1..r3")
        m = re.search(r'agent-port\s+"\$\{IC_REPLICA(\d)_PORT-(\d+)\}"', rest)
        if not m or m.group(1) != n or m.group(2) != port:
            fail(f"server {name}: agent-port must be \"${{IC_REPLICA{n}_PORT-{port}}}\"")
        if "agent-check" not in rest or "GET /health/weight" not in rest:
            fail(f"server {name}: no agent-check on /health/weight")
    for be in by_backend:
        if "uri /health " not in be or "http-check expect status 200" not in be:
            fail(f"back end {be.split()[0]}: no health check on GET /health")
    for needle in ("timeout tunnel", "url_param(affinity)", "balance hash", "json_query('$.user')",
                   "# TLS"):
        if needle not in text:
            fail(f"haproxy.cfg lacks {needle!r}")
    if not failures:
        ok("haproxy.cfg: r1..r3 in both back ends, health and agent checks, affinity, hash")


def main(argv):
    if len(argv) < 2 or argv[1] not in ("systemd", "config", "prometheus", "grafana", "docker",
                                        "options", "haproxy"):
        print(__doc__, file=sys.stderr)
        return 2
    binary = None
    if "--bin" in argv:
        i = argv.index("--bin")
        binary = argv[i + 1] if i + 1 < len(argv) else None
    {"systemd": lambda: check_systemd(binary), "config": lambda: check_config(binary),
     "prometheus": check_prometheus, "grafana": check_grafana,
     "docker": check_docker, "options": lambda: check_options(binary),
     "haproxy": check_haproxy}[argv[1]]()
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
