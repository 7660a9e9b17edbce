"""GET /metrics, the Prometheus text exposition format 0.0.4: its content
type, promtool's lint of a live scrape, every contracted metric name with its
TYPE, counters that agree with the END messages a client received, the
--metrics-token bearer check, and a REAL Prometheus server (/usr/bin/prometheus,
or IC_PROMETHEUS) that scrapes the server and answers PromQL over the result.

promtool (IC_PROMTOOL, default /usr/bin/promtool) and prometheus come from
Debian's prometheus package; the tests fail, not skip, without them (CI
installs it)."""
import json
import math
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import GREEDY, connect, free_port, run

PROMETHEUS = os.environ.get("IC_PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("IC_PROMTOOL", "/usr/bin/promtool")

GEN = dict(max_tokens=8, ignore_eos=True, **GREEDY)

COUNTERS = ["inferencecenter_generations_total", "inferencecenter_prompt_tokens_total",
            "inferencecenter_generated_tokens_total", "inferencecenter_auth_failures_total",
            "inferencecenter_errors_total", "inferencecenter_scheduler_steps_total"]
GAUGES = ["inferencecenter_sessions", "inferencecenter_sessions_max",
          "inferencecenter_generations_running", "inferencecenter_queue_depth",
          "inferencecenter_kv_cells_used", "inferencecenter_kv_cells_capacity",
          "inferencecenter_gpu_layers",
          "inferencecenter_state", "inferencecenter_websocket_connections",
          "inferencecenter_scheduler_stalled", "inferencecenter_build_info",
          "inferencecenter_gpu_temperature_celsius", "inferencecenter_gpu_memory_used_bytes",
          "inferencecenter_gpu_memory_total_bytes", "inferencecenter_gpu_utilization_ratio",
          "inferencecenter_gpu_power_watts", "inferencecenter_cpu_usage_ratio",
          "inferencecenter_ram_used_bytes", "inferencecenter_ram_total_bytes"]
HISTOGRAMS = ["inferencecenter_queue_time_seconds",
              "inferencecenter_time_to_first_token_seconds",
              "inferencecenter_inter_token_latency_seconds",
              "inferencecenter_request_duration_seconds"]
# Families that may have no samples: GPUs on a host without one.
MAY_BE_EMPTY = {n for n in GAUGES if n.startswith("inferencecenter_gpu_")
                and n != "inferencecenter_gpu_layers"}
EXPECTED_TYPES = {**{n: "counter" for n in COUNTERS}, **{n: "gauge" for n in GAUGES},
                  **{n: "histogram" for n in HISTOGRAMS}}
END_REASONS = ["eos", "length", "stop_string", "abort", "context_full", "shutdown", "error"]
STATES = ["loading", "ready", "throttled", "sleeping", "stuck"]


# ---------------------------------------------------------------- helpers

def get_metrics(port, token=None, timeout=5):
    """(status, content type, text) of GET /metrics."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8", "replace")


def scrape(port, token=None):
    status, _, text = get_metrics(port, token)
    assert status == 200, (status, text)
    return text


def samples(text):
    """{'name{labels}': value} of every sample line (no timestamps here).
    The value is the text after the last space: label values may hold spaces."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def types(text):
    """{family: type} from the # TYPE lines; a family typed twice fails."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert name not in out, f"{name} typed twice"
            out[name] = typ
    return out


def wait_scrape(port, pred, timeout=10, token=None):
    """Scrapes until pred(samples) holds; returns those samples. The gauges
    come from the scheduler's published stats, which may lag an END a little."""
    deadline = time.monotonic() + timeout
    while True:
        s = samples(scrape(port, token))
        if pred(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s; last scrape: "
                                 f"{ {k: v for k, v in s.items() if 'bucket' not in k} }")
        time.sleep(0.05)


def promtool_check(text):
    assert os.access(PROMTOOL, os.X_OK), \
        f"{PROMTOOL} not found: install Debian's prometheus package or set IC_PROMTOOL"
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        f"promtool check metrics (rc {p.returncode}):\n{p.stdout}{p.stderr}"


async def generate(server, n, prompt="Once upon a time"):
    """n greedy generations in one session; returns their END messages."""
    c = await connect(server)
    sid = await c.create_session()
    ends = []
    for _ in range(n):
        res = await c.infer(sid, prompt, **GEN)
        assert res.error is None, res.error
        assert res.end["stats"]["generated_tokens"] == len(res.tokens) > 0
        ends.append(res.end)
    await c.close()
    return ends


# -------------------------------------------------------------- Prometheus

class Prometheus:
    """A real Prometheus scraping one target every second; all its files
    (config, TSDB, log) live in workdir."""

    def __init__(self, workdir, target_port, extra_scrape_config=""):
        assert os.access(PROMETHEUS, os.X_OK), \
            f"{PROMETHEUS} not found: install Debian's prometheus package or set IC_PROMETHEUS"
        self.port = free_port()
        d = Path(workdir) / f"prometheus-{self.port}"
        d.mkdir()
        cfg = d / "prometheus.yml"
        cfg.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: inferencecenter\n"
            "    metrics_path: /metrics\n"
            f"{extra_scrape_config}"
            "    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n")
        self.log_path = d / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", "replace")[-4000:]

    def _get(self, path, timeout=5):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                    timeout=timeout) as r:
            return r.status, r.read()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self._get("/-/ready", timeout=1)[0] == 200:
                    return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def query(self, expr):
        """The result list of an instant query."""
        _, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        r = json.loads(body)
        assert r["status"] == "success", r
        return r["data"]["result"]

    def value(self, expr):
        """The one value of an instant query, or None when it has no result."""
        res = self.query(expr)
        assert len(res) <= 1, res
        return float(res[0]["value"][1]) if res else None

    def targets(self):
        return json.loads(self._get("/api/v1/targets")[1])["data"]["activeTargets"]

    def wait_value(self, expr, pred, timeout=30):
        deadline = time.monotonic() + timeout
        v = None
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and pred(v):
                return v
            time.sleep(0.2)
        raise AssertionError(f"{expr} = {v} after {timeout} s; targets: {self.targets()}\n"
                             f"{self.log()}")

    def stop(self, timeout=10):
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        finally:
            self._log.close()


@pytest.fixture
def start_prometheus(tmp_path):
    """start_prometheus(target_port, extra_scrape_config="") -> a ready
    Prometheus; every one is stopped at teardown (bounded waits)."""
    started = []

    def start(target_port, extra_scrape_config=""):
        p = Prometheus(tmp_path, target_port, extra_scrape_config)
        started.append(p)
        return p.wait_ready()

    yield start
    for p in started:
        p.stop()


# ------------------------------------------------------------------ tests

def test_content_type_is_text_format_0_0_4(server):
    status, ctype, text = get_metrics(server.port)
    assert status == 200, text
    assert ctype.replace(" ", "").startswith("text/plain;version=0.0.4"), ctype
    assert text.endswith("\n")


def test_promtool_accepts_live_scrape(server):
    run(generate(server, 1))
    promtool_check(scrape(server.port))


def test_every_metric_name_with_its_type(server):
    run(generate(server, 1))
    text = scrape(server.port)
    got = types(text)
    missing = {n: t for n, t in EXPECTED_TYPES.items() if got.get(n) != t}
    assert not missing, f"wrong or missing # TYPE: {missing}; got {got}"
    helped = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert set(EXPECTED_TYPES) <= helped, set(EXPECTED_TYPES) - helped
    s = samples(text)
    names = {k.split("{")[0] for k in s}
    for n, t in EXPECTED_TYPES.items():
        if n in MAY_BE_EMPTY:
            continue
        want = f"{n}_count" if t == "histogram" else n
        assert want in names, f"no sample of {n}"
    for r in END_REASONS:
        assert f'inferencecenter_generations_total{{reason="{r}"}}' in s, r
    assert sum(s[f'inferencecenter_state{{state="{st}"}}'] for st in STATES) == 1
    build = [k for k in s if k.startswith("inferencecenter_build_info{")]
    assert len(build) == 1 and s[build[0]] == 1
    assert 'version="' in build[0] and 'llama_commit="' in build[0]
    for h in HISTOGRAMS:
        assert s[f'{h}_bucket{{le="+Inf"}}'] == s[f"{h}_count"], h


def test_counters_match_end_messages(server):
    async def body():
        c = await connect(server)     # stays open: one WebSocket connection
        ends = await generate(server, 3)
        ends += await generate(server, 2, prompt="The little dog")
        want_gen = sum(e["stats"]["generated_tokens"] for e in ends)
        want_prompt = sum(e["stats"]["prompt_tokens"] for e in ends)
        # generate()'s own connections close asynchronously: wait for them too
        s = wait_scrape(server.port, lambda s: s["inferencecenter_generated_tokens_total"]
                        >= want_gen and s["inferencecenter_generations_running"] == 0
                        and s["inferencecenter_websocket_connections"] == 1)
        assert s["inferencecenter_generated_tokens_total"] == want_gen
        assert s["inferencecenter_prompt_tokens_total"] == want_prompt
        reasons = {}
        for e in ends:
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
        for r in END_REASONS:
            assert s[f'inferencecenter_generations_total{{reason="{r}"}}'] == \
                reasons.get(r, 0), (r, reasons)
        for h in ("inferencecenter_time_to_first_token_seconds",
                  "inferencecenter_request_duration_seconds"):
            assert s[f"{h}_count"] == len(ends), h
            assert s[f"{h}_sum"] > 0, h
        # 8 tokens each: at least 7 gaps between TOKENs per generation
        assert s["inferencecenter_inter_token_latency_seconds_count"] >= 7 * len(ends)
        assert s["inferencecenter_websocket_connections"] == 1
        assert s["inferencecenter_scheduler_steps_total"] > 0
        assert s["inferencecenter_sessions_max"] > 0
        assert s["inferencecenter_kv_cells_capacity"] > 0
        await c.close()
    run(body())


def test_metrics_token_required(start_server):
    token = "SECRET-" + secrets.token_hex(16)
    srv = start_server(["--metrics-token", token])
    srv.secrets.append(token)
    status, _, _ = get_metrics(srv.port)
    assert status == 401
    status, _, _ = get_metrics(srv.port, token="wrong-" + token)
    assert status == 401
    status, _, _ = get_metrics(srv.port, token=token[:-1])
    assert status == 401
    status, ctype, text = get_metrics(srv.port, token=token)
    assert status == 200, text
    assert "inferencecenter_generated_tokens_total " in text
    assert ctype.replace(" ", "").startswith("text/plain;version=0.0.4"), ctype


def test_real_prometheus_scrapes_and_queries(server, start_prometheus):
    prom = start_prometheus(server.port)
    # a first scrape before any generation, so rate() sees the counters rise
    prom.wait_value('up{job="inferencecenter"}', lambda v: v == 1)
    prom.wait_value("inferencecenter_generated_tokens_total", lambda v: v == 0)
    ends = run(generate(server, 4))
    want = sum(e["stats"]["generated_tokens"] for e in ends)
    got = prom.wait_value("inferencecenter_generated_tokens_total", lambda v: v >= want)
    assert got == want > 0
    q = ("histogram_quantile(0.5, sum(rate("
         "inferencecenter_time_to_first_token_seconds_bucket[1m])) by (le))")
    p50 = prom.wait_value(q, lambda v: math.isfinite(v), timeout=10)
    assert 0 < p50 < 60, p50
    q = ("histogram_quantile(0.9, sum(increase("
         "inferencecenter_request_duration_seconds_bucket[1m])) by (le))")
    p90 = prom.wait_value(q, lambda v: math.isfinite(v), timeout=10)
    assert 0 < p90 <= 600, p90
    assert prom.value('sum(inferencecenter_state{state="ready"})') == 1
    health = [t for t in prom.targets() if t["labels"].get("job") == "inferencecenter"]
    assert health and health[0]["health"] == "up" and not health[0]["lastError"], health


def test_real_prometheus_with_metrics_token(start_server, start_prometheus):
    token = secrets.token_hex(16)
    srv = start_server(["--metrics-token", token])
    srv.secrets.append(token)
    prom = start_prometheus(srv.port, extra_scrape_config=(
        "    authorization:\n"
        "      type: Bearer\n"
        f"      credentials: '{token}'\n"))
    prom.wait_value('up{job="inferencecenter"}', lambda v: v == 1)
    assert prom.value("inferencecenter_scheduler_steps_total") is not None
