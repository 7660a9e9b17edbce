"""Hardware: the NVML monitor through the real dlopen path (a scripted fake
NVML, tests/fakenvml), METRICS `gpus`, the thermal guard, idle sleep
(--idle-unload) and how quiet an idle server is.

The fake library is IC_FAKE_NVML (set by CTest); the server loads it as
IC_NVML_LIBRARY and reads the readings from IC_FAKE_NVML_FILE, which the
tests rewrite while the server runs.
"""
import asyncio
import os
import re
import time
from pathlib import Path

import pytest

from conftest import (GREEDY, LONG, STORY_12, connect, http_get, needs_stories, run,
                      wait_metrics)

FAKE_NVML = os.environ.get("IC_FAKE_NVML", "")

GTX1060 = {"name": "NVIDIA GeForce GTX 1060 3GB", "utilization": 42,
           "memory_total": 3221225472, "memory_used": 1073741824, "power": 80.5}


def fake_env(script):
    assert FAKE_NVML and Path(FAKE_NVML).is_file(), \
        "IC_FAKE_NVML must name the fake NVML library (CTest sets it)"
    return {"IC_NVML_LIBRARY": FAKE_NVML, "IC_FAKE_NVML_FILE": str(script)}


def write_gpus(path, *temps, **fields):
    """Scripts one GPU per temperature, GTX 1060-like, into the fake's file."""
    lines = [f"count {len(temps)}"]
    for i, t in enumerate(temps):
        for k, v in {**GTX1060, **fields, "temperature": t}.items():
            lines.append(f"{i}.{k} {v}")
    tmp = Path(str(path) + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)   # the server never reads a half-written file


def state(m):
    return m["engine"]["state"]


# ------------------------------------------------------------ the monitor

def test_metrics_gpus_come_from_nvml(start_server, tmp_path):
    script = tmp_path / "gpus"
    write_gpus(script, 61, 70)
    srv = start_server(env=fake_env(script))

    async def body():
        c = await connect(srv)
        gpus = (await c.metrics())["gpus"]
        assert gpus == [
            {"index": 0, "name": GTX1060["name"], "temperature_c": 61.0,
             "utilization_pct": 42.0, "memory_used_bytes": GTX1060["memory_used"],
             "memory_total_bytes": GTX1060["memory_total"], "power_w": 80.5},
            {"index": 1, "name": GTX1060["name"], "temperature_c": 70.0,
             "utilization_pct": 42.0, "memory_used_bytes": GTX1060["memory_used"],
             "memory_total_bytes": GTX1060["memory_total"], "power_w": 80.5},
        ]
        # Readings are at most a second old: a change shows up after that.
        write_gpus(script, 66, 70)
        await wait_metrics(c, lambda m: m["gpus"][0]["temperature_c"] == 66.0, timeout=5)
        await c.close()
    run(body())
    status, text = http_get(srv.port, "/metrics")
    text = text.decode()
    assert status == 200
    assert 'inferencecenter_gpu_temperature_celsius{gpu="1",name="NVIDIA GeForce GTX 1060 3GB"} 70' \
        in text
    assert 'inferencecenter_gpu_power_watts{gpu="0",name="NVIDIA GeForce GTX 1060 3GB"} 80.5' in text
    assert "gpu: 2 NVIDIA GPUs" in srv.stderr()


def test_without_nvml_the_server_runs_on_the_cpu(start_server, tmp_path):
    srv = start_server(env={"IC_NVML_LIBRARY": str(tmp_path / "no-such-libnvidia-ml.so.1")})

    async def body():
        c = await connect(srv)
        m = await c.metrics()
        assert m["gpus"] == []
        sid = await c.create_session()
        r = await c.infer(sid, "Once upon a time", max_tokens=4, **GREEDY)
        assert r.reason == "length"
        await c.close()
    run(body())
    lines = [ln for ln in srv.stderr().splitlines() if "gpu:" in ln]
    assert len(lines) == 1, lines            # exactly one line says so
    assert " info " in lines[0] and "runs on the CPU" in lines[0], lines
    # The planner's line: a CPU build of llama.cpp offloads nothing.
    assert "GPU split: no GPU, " in srv.stderr()


def test_auto_split_on_a_cpu_build_offloads_nothing(start_server):
    srv = start_server(["--gpu-layers", "auto", "--max-sessions", 3])

    async def body():
        c = await connect(srv)
        assert c.hello["limits"]["max_sessions"] == 3   # memory holds them all
        m = await c.metrics()
        assert m["engine"]["n_gpu_layers"] == 0 and m["engine"]["max_sessions"] == 3
        await c.close()
    run(body())
    plan = [ln for ln in srv.stderr().splitlines() if "GPU split:" in ln]
    assert len(plan) == 1 and "3 sessions x 2048 tokens" in plan[0], plan


def test_nvml_that_fails_to_init_is_no_gpu(start_server, tmp_path):
    script = tmp_path / "gpus"
    script.write_text("count 1\nfail_init 1\n")
    srv = start_server(env=fake_env(script))

    async def body():
        c = await connect(srv)
        assert (await c.metrics())["gpus"] == []
        await c.close()
    run(body())
    assert "nvmlInit failed" in srv.stderr()


# ------------------------------------------------------- thermal guard

async def first_token_within(client, seconds):
    """The next TOKEN if one comes within seconds, else None."""
    try:
        m = await client.recv_type("TOKEN", "END", "ERROR", timeout=seconds)
    except asyncio.TimeoutError:
        return None
    assert m["type"] == "TOKEN", m
    return m


def test_thermal_guard_holds_prefill_and_resumes_below_the_hysteresis(start_server, tmp_path):
    script = tmp_path / "gpus"
    write_gpus(script, 60)
    # A long context: the first generation must outlast the whole test.
    srv = start_server(["--temp-limit", 83, "--max-sessions", 2, "--ctx-size", 32768,
                        "--prefix-cache", 0], env=fake_env(script))

    async def body():
        a = await connect(srv)
        b = await connect(srv)
        sa = await a.create_session()
        sb = await b.create_session()
        await a.start_infer(sa, "Once upon a time", **LONG)
        assert (await a.recv_type("TOKEN"))["index"] == 0
        m = await b.metrics()
        assert state(m) == "ready"

        write_gpus(script, 90)                       # too hot
        await wait_metrics(b, lambda m: state(m) == "throttled", timeout=5)
        # No new prefill: B's prompt waits ...
        await b.start_infer(sb, "Once upon a time", max_tokens=4, **GREEDY)
        assert await first_token_within(b, 2.5) is None
        # ... while A keeps decoding, paced.
        n0 = (await a.recv_type("TOKEN"))["index"]
        assert (await a.recv_type("TOKEN"))["index"] == n0 + 1

        write_gpus(script, 80)                       # below the limit, above limit - 5
        await asyncio.sleep(2.5)
        assert state(await b.metrics()) == "throttled"
        assert await first_token_within(b, 0.5) is None

        write_gpus(script, 77)                       # 6 below: full speed again
        first = await first_token_within(b, 5)
        assert first is not None and first["index"] == 0
        r = await b.collect(sb)
        assert r.reason == "length"
        assert state(await b.metrics()) == "ready"
        await a.send({"type": "ABORT", "session_id": sa})
        while (await a.recv_type("TOKEN", "END"))["type"] != "END":
            pass
        await a.close()
        await b.close()
    run(body(), timeout=90)
    log = srv.stderr()
    hot = [ln for ln in log.splitlines() if "thermal guard: GPU at 90 C" in ln]
    cool = [ln for ln in log.splitlines() if "back to full speed" in ln]
    assert len(hot) == 1 and len(cool) == 1, log


def test_thermal_guard_off_without_a_limit(start_server, tmp_path):
    script = tmp_path / "gpus"
    write_gpus(script, 95)
    srv = start_server(["--temp-limit", 0], env=fake_env(script))

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        r = await c.infer(sid, "Once upon a time", max_tokens=4, **GREEDY)
        assert r.reason == "length"
        assert state(await c.metrics()) == "ready"
        await c.close()
    run(body())
    assert "thermal guard" not in srv.stderr()


# ------------------------------------------------------------ idle sleep

TURNS = [("Once upon a time", 8), (" She", 16), (" One day", 12)]


async def conversation(srv, sleep_between=False):
    """Three greedy raw turns in one session plus a session on a shared
    system prompt; with sleep_between, the server sleeps before each later
    turn. Returns the texts."""
    c = await connect(srv)
    s1 = await c.create_session(params=GREEDY)
    s2 = await c.create_session(system="Once upon a", params=GREEDY)
    texts = []
    for i, (prompt, n) in enumerate(TURNS):
        if sleep_between and i > 0:
            await wait_metrics(c, lambda m: state(m) == "sleeping", timeout=10)
        r = await c.infer(s1, prompt, max_tokens=n)
        assert r.end is not None, r.error
        texts.append(r.text)
        r = await c.infer(s2, " time" if i == 0 else prompt, max_tokens=n)
        assert r.end is not None, r.error
        texts.append(r.text)
    await c.close()
    return texts


@needs_stories
def test_idle_unload_then_the_conversation_continues_as_if_nothing_happened(start_server):
    awake = start_server()
    sleepy = start_server(["--idle-unload", 1])
    want = run(conversation(awake))
    got = run(conversation(sleepy, sleep_between=True), timeout=90)
    assert got == want
    assert want[0] == STORY_12[:len(want[0])]
    log = sleepy.stderr()
    unloads = re.findall(r"idle for \d+ s: model \S+ unloaded", log)
    assert len(unloads) >= 2 and log.count("woke up") >= 2, log
    assert "KV state not restored" not in log


def test_sleeping_server_reports_sleeping_and_frees_the_model(start_server):
    srv = start_server(["--idle-unload", 1])

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        await c.infer(sid, "Once upon a time", max_tokens=4, **GREEDY)
        m = await wait_metrics(c, lambda m: state(m) == "sleeping", timeout=10)
        assert m["sessions"][0]["n_ctx_used"] > 0    # the session and its context remain
        status, body = http_get(srv.port, "/health")
        assert status == 200 and b'"sleeping"' in body
        prom = http_get(srv.port, "/metrics")[1].decode()
        assert 'inferencecenter_state{state="sleeping"} 1' in prom
        r = await c.infer(sid, " The", max_tokens=4, **GREEDY)
        assert r.reason == "length"
        assert state(await c.metrics()) in ("ready", "sleeping")
        await c.close()
    run(body(), timeout=60)


def thread_counters(pid):
    """{tid: (voluntary context switches, utime + stime ticks)}."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
        except OSError:
            continue
        vol = next(int(ln.split()[1]) for ln in status.splitlines()
                   if ln.startswith("voluntary_ctxt_switches"))
        fields = stat[stat.rindex(")") + 2:].split()
        out[task.name] = (vol, int(fields[11]) + int(fields[12]))
    return out


@pytest.mark.parametrize("args", [[], ["--idle-unload", 1]], ids=["idle", "sleeping"])
def test_idle_server_does_not_spin(start_server, args, capsys):
    """No thread wakes more than once a second while idle; the CPU use over
    10 s is reported (not asserted: this machine is shared and noisy)."""
    srv = start_server(args)

    async def warm():
        c = await connect(srv)
        sid = await c.create_session()
        await c.infer(sid, "Once upon a time", max_tokens=8, **GREEDY)
        if args:
            await wait_metrics(c, lambda m: state(m) == "sleeping", timeout=10)
        await c.close()
    run(warm())
    time.sleep(1)
    before = thread_counters(srv.pid)
    time.sleep(10)
    after = thread_counters(srv.pid)
    wakes = {t: after[t][0] - before[t][0] for t in after if t in before}
    ticks = sum(after[t][1] - before[t][1] for t in after if t in before)
    with capsys.disabled():
        print(f"\n[idle {'sleeping' if args else 'awake'}] CPU over 10 s: {ticks} ticks "
              f"({ticks / os.sysconf('SC_CLK_TCK') * 100 / 10:.2f}% of one core); "
              f"wake-ups per thread: {sorted(wakes.values(), reverse=True)}")
    assert max(wakes.values()) <= 11, wakes
