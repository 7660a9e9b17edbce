"""Several models on one server (issue 16): --models-dir and a repeated
--model, HELLO's list, CREATE_SESSION's and the OpenAI API's "model", and
answers equal to those of a server that serves the model alone."""
import json
import os
import urllib.error
import urllib.request

from conftest import (GREEDY, IC_TEST_MODELS, MODEL, TINY, Server, connect, http_get, run)

SPM = str(IC_TEST_MODELS / "vocab-gpt-2.gguf")  # another vocabulary and weights
PROMPT = "Once upon a time"


def models_dir(tmp_path):
    """A directory of two models (links named a-tiny and b-gpt2)."""
    d = tmp_path / "models"
    d.mkdir()
    os.symlink(TINY, d / "a-tiny.gguf")
    os.symlink(SPM if os.path.exists(SPM) else TINY, d / "b-gpt2.gguf")
    (d / "notes.txt").write_text("not a model")
    return d


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


async def answers(server, models):
    """{model: greedy raw text} from sessions on each model (None: the default),
    all generating at once."""
    import asyncio
    clients = [await connect(server) for _ in models]
    sids = []
    for c, m in zip(clients, models):
        r = await c.request({"type": "CREATE_SESSION", **({"model": m} if m else {})})
        assert r["type"] == "SESSION_CREATED", r
        sids.append((r["session_id"], r.get("model")))
    for c, (sid, _) in zip(clients, sids):
        await c.start_infer(sid, PROMPT, max_tokens=16, **GREEDY)
    results = await asyncio.gather(*(c.collect(sid) for c, (sid, _) in zip(clients, sids)))
    out = {}
    for m, (sid, named), res in zip(models, sids, results):
        assert res.end is not None, res.error
        out[m] = (named, res.text)
    for c in clients:
        await c.close()
    return out


def alone(tmp_path, path):
    """The greedy answer of a server that serves path alone."""
    s = Server(tmp_path, model=path)
    try:
        s.wait_ready()
        return run(answers(s, [None]))[None][1]
    finally:
        assert s.terminate() == 0
        s.close_files()


def test_models_dir_lists_selects_and_answers_as_alone(start_server, tmp_path):
    d = models_dir(tmp_path)
    srv = start_server(args=["--models-dir", d])
    default = os.path.basename(MODEL)[:-5]

    async def body():
        c = await connect(srv)
        assert c.hello["models"] == [default, "a-tiny", "b-gpt2"]
        r = await c.request({"type": "CREATE_SESSION", "model": "nope", "id": 7})
        assert r["type"] == "ERROR" and r["code"] == "model_not_found", r
        assert "nope" in r["message"] and r["id"] == 7
        await c.close()
        return await answers(srv, [None, "a-tiny", "b-gpt2", default])

    got = run(body(), timeout=120)
    assert got[None][0] == default and got["a-tiny"][0] == "a-tiny"
    assert got[None][1] == got[default][1]
    # the models differ, so a session answered by the wrong one would show
    assert len({got[m][1] for m in (default, "a-tiny", "b-gpt2")}) == 3, got
    status, models = http_get(srv.port, "/v1/models")
    assert status == 200
    listed = json.loads(models)["data"]
    assert [m["id"] for m in listed] == [default, "a-tiny", "b-gpt2"]
    assert all(m["loaded"] is True for m in listed)
    status, one = http_get(srv.port, "/v1/models/b-gpt2")
    assert status == 200 and json.loads(one)["id"] == "b-gpt2"
    assert http_get(srv.port, "/v1/models/nope")[0] == 404
    # OpenAI "model" selects the same way; unknown: 404 naming it
    completions = {}
    for m in ("a-tiny", default):
        st, r = post(srv.port, "/v1/completions",
                     {"model": m, "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        assert st == 200 and r["model"] == m, r
        completions[m] = r["choices"][0]["text"]
    st, r = post(srv.port, "/v1/completions", {"model": "nope", "prompt": "x", "max_tokens": 2})
    assert st == 404 and "nope" in r["error"]["message"], r
    srv.terminate()
    # each model answers as a server serving it alone does
    for name, path in ((default, MODEL), ("a-tiny", TINY),
                       ("b-gpt2", str(d / "b-gpt2.gguf"))):
        want = alone(tmp_path, path)
        assert got[name][1] == want, name
        if name in completions:
            assert completions[name] == want, name


def test_repeated_model_and_duplicate_names(start_server, tmp_path):
    srv = start_server(args=["--model", TINY])

    async def body():
        c = await connect(srv)
        assert c.hello["models"] == [os.path.basename(MODEL)[:-5], "tiny-f32"]
        r = await c.request({"type": "CREATE_SESSION", "model": "tiny-f32"})
        assert r["type"] == "SESSION_CREATED" and r["model"] == "tiny-f32", r
        res = await c.infer(r["session_id"], PROMPT, max_tokens=4, **GREEDY)
        assert res.end["reason"] in ("length", "eos")
        await c.close()

    run(body())
    dup = Server(tmp_path, model=TINY, args=["--model", TINY])
    rc = dup.wait_exit()
    assert rc == 2 and "two models are named 'tiny-f32'" in dup.log()
    dup.close_files()


def test_single_model_hello_unchanged_but_lists_it(server):
    async def body():
        c = await connect(server)
        assert c.hello["models"] == [os.path.basename(MODEL)[:-5]]
        r = await c.request({"type": "CREATE_SESSION"})
        assert r["type"] == "SESSION_CREATED" and r["session_id"] == "s1", r
        await c.close()

    run(body())


async def two_turns(server, model):
    """A session's two greedy raw turns (the second continues the first)."""
    c = await connect(server)
    sid = await c.create_session(**({"model": model} if model else {}))
    a = await c.infer(sid, PROMPT, max_tokens=8, **GREEDY)
    b = await c.infer(sid, " and then", max_tokens=8, **GREEDY)
    await c.close()
    return a.text, b.text


def test_residency_one_model_at_a_time_keeps_sessions(start_server, tmp_path):
    """--max-loaded-models 1: a request for the sleeping model puts the other
    to sleep; a session whose model slept between its turns continues as it
    would on a server that never swapped."""
    srv = start_server(args=["--model", TINY, "--max-loaded-models", "1"])
    default = os.path.basename(MODEL)[:-5]

    async def body():
        a = await connect(srv)
        b = await connect(srv)
        sa = await a.create_session()
        sb = await b.create_session(model="tiny-f32")
        a1 = await a.infer(sa, PROMPT, max_tokens=8, **GREEDY)
        b1 = await b.infer(sb, PROMPT, max_tokens=8, **GREEDY)   # the default sleeps
        a2 = await a.infer(sa, " and then", max_tokens=8, **GREEDY)  # tiny sleeps
        b2 = await b.infer(sb, " and then", max_tokens=8, **GREEDY)
        for r in (a1, b1, a2, b2):
            assert r.end is not None and r.reason == "length", r.error
        await a.close()
        await b.close()
        return (a1.text, a2.text), (b1.text, b2.text)

    got_a, got_b = run(body(), timeout=120)
    log = srv.log()
    assert f"model {default} sleeps to make room for tiny-f32" in log, log
    assert f"model tiny-f32 sleeps to make room for {default}" in log, log
    from test_prometheus import promtool_check, samples, scrape
    text = scrape(srv.port)
    promtool_check(text)
    m = samples(text)
    assert m[f'inferencecenter_model_loaded{{model="{default}"}}'] == 0  # b2 came last
    assert m['inferencecenter_model_loaded{model="tiny-f32"}'] == 1
    for name in (default, "tiny-f32"):
        assert m[f'inferencecenter_model_swaps_total{{model="{name}"}}'] >= 1
        assert m[f'inferencecenter_model_load_seconds_count{{model="{name}"}}'] >= 1
        assert m[f'inferencecenter_model_load_seconds_bucket{{model="{name}",le="+Inf"}}'] == \
            m[f'inferencecenter_model_load_seconds_count{{model="{name}"}}']
    srv.terminate()
    for path, got in ((MODEL, got_a), (TINY, got_b)):
        s = Server(tmp_path, model=path)
        try:
            s.wait_ready()
            assert run(two_turns(s, None)) == got, path
        finally:
            assert s.terminate() == 0
            s.close_files()


def test_swaps_under_load_lose_no_session(start_server):
    """Clients on two models take turns for several rounds while the server
    holds one model at a time: every generation ends normally and every
    session stays usable."""
    import asyncio
    srv = start_server(args=["--model", TINY, "--max-loaded-models", "1"])

    async def worker(model, rounds):
        c = await connect(srv)
        sid = await c.create_session(**({"model": model} if model else {}))
        texts = []
        for i in range(rounds):
            r = await c.infer(sid, f" turn {i}", max_tokens=4, **GREEDY)
            assert r.end is not None and r.reason == "length", (model, i, r.error)
            texts.append(r.text)
            await asyncio.sleep(0.01 * (i % 3))
        m = await c.metrics()
        await c.close()
        return texts, m

    async def body():
        return await asyncio.gather(*(worker(m, 6) for m in (None, "tiny-f32", None, "tiny-f32")))

    results = run(body(), timeout=180)
    assert len(results) == 4 and all(len(t) == 6 for t, _ in results)
    assert "sleeps to make room" in srv.log()


def admin_post(port, name, action, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/models/{name}/{action}",
                                 data=b"", method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def loaded(port, token=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return {m["id"]: m["loaded"] for m in json.loads(body)["data"]}


def wait_loaded(port, name, want, token=None, timeout=20):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if loaded(port, token)[name] == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} loaded != {want}: {loaded(port, token)}")


def test_admin_unload_and_load(start_server, tmp_path):
    from conftest import LONG, new_token
    tokens = tmp_path / "tokens"
    admin = new_token(tokens, "root", "--admin")
    user = new_token(tokens, "alice")
    assert "admin=true" in tokens.read_text().splitlines()[0]
    srv = start_server(args=["--model", TINY, "--tokens", tokens])
    srv.secrets += [admin, user]
    default = os.path.basename(MODEL)[:-5]

    async def body():
        u = await connect(srv, token=user)
        assert "models" not in u.hello and u.auth["models"] == [default, "tiny-f32"]
        r = await u.request({"type": "MODEL_UNLOAD", "model": "tiny-f32", "id": 1})
        assert r["type"] == "ERROR" and r["code"] == "forbidden" and r["id"] == 1, r
        # alice's generations: one on each model; the admin unloads tiny
        s_tiny = await u.create_session(model="tiny-f32")
        s_def = await u.create_session()
        await u.start_infer(s_tiny, PROMPT, **LONG)
        await u.start_infer(s_def, PROMPT, max_tokens=24, **GREEDY)
        first = await u.recv_type("TOKEN")
        a = await connect(srv, token=admin)
        r = await a.request({"type": "MODEL_UNLOAD", "model": "nope"})
        assert r["type"] == "ERROR" and r["code"] == "model_not_found", r
        r = await a.request({"type": "MODEL_UNLOAD", "model": "tiny-f32", "id": "u"})
        assert r == {"type": "MODEL_STATUS", "id": "u", "model": "tiny-f32", "loaded": False}, r
        ends = {}
        while len(ends) < 2:
            m = await u.recv_type("TOKEN", "END", timeout=60)
            if m["type"] == "END":
                ends[m["session_id"]] = m["reason"]
        assert ends == {s_tiny: "model_unloaded", s_def: "length"}, ends
        wait_loaded(srv.port, "tiny-f32", False, user)
        assert loaded(srv.port, user)[default] is True
        # the session is kept: its next INFER loads the model again
        res = await u.infer(s_tiny, " again", max_tokens=4, **GREEDY)
        assert res.reason == "length", res.error
        assert loaded(srv.port, user)["tiny-f32"] is True
        # unload over HTTP, then load: the model wakes without a request
        assert admin_post(srv.port, "tiny-f32", "unload", admin) == (
            200, {"type": "MODEL_STATUS", "model": "tiny-f32", "loaded": False})
        wait_loaded(srv.port, "tiny-f32", False, user)
        await a.close()
        await u.close()
        return first

    run(body(), timeout=120)
    assert admin_post(srv.port, "tiny-f32", "load", user)[0] == 403
    assert admin_post(srv.port, "tiny-f32", "load")[0] == 401
    assert admin_post(srv.port, "nope", "load", admin)[0] == 404
    assert admin_post(srv.port, "tiny-f32", "explode", admin)[0] == 404
    st, r = admin_post(srv.port, "tiny-f32", "load", admin)
    assert st == 200 and r["loaded"] is True
    wait_loaded(srv.port, "tiny-f32", True, user)
    # a reload of a loaded model (the file may have changed) keeps it loaded
    assert admin_post(srv.port, "tiny-f32", "load", admin)[0] == 200
    wait_loaded(srv.port, "tiny-f32", True, user)
    assert "unloaded by an admin" in srv.log()


def test_admin_on_open_server_is_forbidden(start_server):
    srv = start_server(args=["--model", TINY])

    async def body():
        c = await connect(srv)
        r = await c.request({"type": "MODEL_LOAD", "model": "tiny-f32"})
        assert r["type"] == "ERROR" and r["code"] == "forbidden", r
        await c.close()

    run(body())
    assert admin_post(srv.port, "tiny-f32", "load")[0] == 403


def test_sighup_rescans_models_dir(start_server, tmp_path):
    import asyncio
    import signal
    import time
    d = tmp_path / "models"
    d.mkdir()
    os.symlink(TINY, d / "a-tiny.gguf")
    srv = start_server(args=["--models-dir", d])
    default = os.path.basename(MODEL)[:-5]

    async def body():
        c = await connect(srv)
        assert c.hello["models"] == [default, "a-tiny"]
        sid = await c.create_session(model="a-tiny")
        assert (await c.infer(sid, PROMPT, max_tokens=4, **GREEDY)).reason == "length"
        os.symlink(SPM if os.path.exists(SPM) else TINY, d / "b-gpt2.gguf")
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "now also serving model b-gpt2" not in srv.log():
            assert time.monotonic() < deadline, srv.log()
            await asyncio.sleep(0.05)
        n = await connect(srv)
        assert n.hello["models"] == [default, "a-tiny", "b-gpt2"]
        r = await n.request({"type": "CREATE_SESSION", "model": "b-gpt2"})
        assert r["type"] == "SESSION_CREATED" and r["model"] == "b-gpt2", r
        assert (await n.infer(r["session_id"], PROMPT, max_tokens=4, **GREEDY)).reason == "length"
        # the session opened before the rescan is untouched
        assert (await c.infer(sid, " more", max_tokens=4, **GREEDY)).reason == "length"
        await n.close()
        await c.close()

    run(body(), timeout=90)
    assert [m["id"] for m in json.loads(http_get(srv.port, "/v1/models")[1])["data"]] == \
        [default, "a-tiny", "b-gpt2"]


def test_models_ini_aliases_with_their_own_ctx(start_server, tmp_path):
    d = models_dir(tmp_path)
    q8 = str(IC_TEST_MODELS / "tiny-q8_0.gguf")
    (d / "models.ini").write_text(
        "# aliases\n[chat]\npath = b-gpt2.gguf\nctx-size = 512\n\n"
        f"[small]\npath = {q8}\nctx-size = 256\ngpu-layers = 0\n")
    srv = start_server(args=["--models-dir", d])
    default = os.path.basename(MODEL)[:-5]

    async def body():
        c = await connect(srv)
        assert c.hello["models"] == [default, "a-tiny", "chat", "small"]
        ctx = {}
        for m in ("chat", "small", "a-tiny"):
            r = await c.request({"type": "CREATE_SESSION", "model": m})
            assert r["type"] == "SESSION_CREATED" and r["model"] == m, r
            ctx[m] = r["n_ctx"]
            assert (await c.infer(r["session_id"], PROMPT, max_tokens=4, **GREEDY)).reason == \
                "length"
        r = await c.request({"type": "CREATE_SESSION", "model": "b-gpt2"})
        assert r["code"] == "model_not_found", r   # served as 'chat' only
        await c.close()
        return ctx

    assert run(body(), timeout=90) == {"chat": 512, "small": 256, "a-tiny": 2048}


def test_models_ini_errors_name_the_line(tmp_path):
    d = models_dir(tmp_path)
    for text, want in (("[chat]\nctx-size = 512\n", "models.ini:2: [chat]: path = FILE comes first"),
                       ("[chat]\npath = b-gpt2.gguf\nctx-size = big\n", "models.ini:3: [chat]: invalid"),
                       ("path = x.gguf\n", "models.ini:1: 'path' outside a [MODEL] section"),
                       ("[a b]\npath = x.gguf\n", "models.ini:2: [a b]: a model name")):
        (d / "models.ini").write_text(text)
        s = Server(tmp_path, args=["--models-dir", d])
        rc = s.wait_exit()
        log = s.log()
        s.close_files()
        assert rc == 2 and want in log, (text, log)


def test_model_flag_replaces_the_config_files_models(start_server, tmp_path):
    conf = tmp_path / "ic.conf"
    conf.write_text(f"model = {TINY}\nmodel = {SPM}\n")
    srv = start_server(args=["--config", conf])   # the fixture adds --model MODEL

    async def body():
        c = await connect(srv)
        assert c.hello["models"] == [os.path.basename(MODEL)[:-5]]
        await c.close()

    run(body())


def footprints(log):
    """{model: planned RAM MiB awake} from the start-up log."""
    import re
    return {m: float(r) for m, r in
            re.findall(r"residency: model (\S+) needs ([0-9.]+) MiB RAM", log)}


def test_residency_by_bytes_keeps_small_models_awake(start_server, tmp_path):
    """--models-ram: the awake models stay within the bytes, not a count.
    With room for the default (small) model beside either tiny model but not
    for both tiny ones, asking for one tiny model puts the other to sleep
    and leaves the small one awake; the small one then joins without a
    swap (a count bound of 1 or 2 would do neither)."""
    d = tmp_path / "models"
    d.mkdir()
    # a longer context makes the tiny models' KV cache outweigh the small one
    (d / "models.ini").write_text(
        f"[a-f32]\npath = {TINY}\nctx-size = 8192\n\n"
        f"[b-f16]\npath = {IC_TEST_MODELS / 'tiny-f16.gguf'}\nctx-size = 8192\n")
    probe = start_server(args=["--models-dir", d])
    need = footprints(probe.log())
    probe.terminate()
    default = os.path.basename(MODEL)[:-5]
    s, a, b = need[default], need["a-f32"], need["b-f16"]
    budget = round(s + a + b / 2)
    # the choice below is decided by these sizes (1 MiB of rounding each way)
    assert s + a + 1 < budget < a + b - 1 and s + b + 1 < budget, need
    srv = start_server(args=["--models-dir", d, "--models-ram", str(budget)])
    log = srv.log()
    assert f"awake ones are kept within {budget:.0f} MiB RAM (--models-ram)" in log, log
    # at start b-f16 did not fit beside the others: a-f32, loaded last before it, slept
    assert f"model a-f32 sleeps to make room for b-f16" in log, log

    def sleeps():
        return srv.log().count("sleeps to make room")

    async def turn(model):
        c = await connect(srv)
        sid = await c.create_session(model=model)
        r = await c.infer(sid, PROMPT, max_tokens=4, **GREEDY)
        assert r.end is not None and r.reason == "length", r.error
        await c.close()

    async def body():
        n0 = sleeps()
        await turn("a-f32")       # a + b do not fit: both others sleep
        assert sleeps() == n0 + 2, srv.log()
        await turn(default)       # s + a fit: nobody sleeps
        assert sleeps() == n0 + 2, srv.log()
        await turn("b-f16")       # a (least recently used) sleeps, s stays
        assert sleeps() == n0 + 3, srv.log()
        last = [ln for ln in srv.log().splitlines() if "sleeps to make room" in ln][-1]
        assert "model a-f32 sleeps to make room for b-f16" in last, last

    run(body(), timeout=120)
    from test_prometheus import samples, scrape
    m = samples(scrape(srv.port))
    assert m[f'inferencecenter_model_loaded{{model="{default}"}}'] == 1
    assert m['inferencecenter_model_loaded{model="a-f32"}'] == 0
    assert m['inferencecenter_model_loaded{model="b-f16"}'] == 1
