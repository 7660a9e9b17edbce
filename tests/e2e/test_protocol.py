"""Protocol v1 as a well-behaved client sees it: HELLO, sessions, INFER
streaming, ids, ABORT, errors tied to sessions, stop strings, raw and chat
modes, METRICS and subscriptions, HTTP on the same port."""
import asyncio
import json
import os
import re
import time

import pytest

from conftest import (GREEDY, LONG, MODEL, STORY_12, STORY_TOKENS, connect, http_get,
                      needs_stories, run)


# ------------------------------------------------------------------ HELLO

def test_hello_fields_and_values(start_server):
    srv = start_server(["--ctx-size", 256, "--max-sessions", 3,
                        "--max-sessions-per-client", 2])

    async def body():
        c = await connect(srv)
        h = c.hello
        assert h["type"] == "HELLO"
        assert h["server"] == "InferenceCenter"
        assert isinstance(h["version"], str) and re.match(r"^\d+\.\d+", h["version"])
        assert h["protocol"] == 1
        assert h["auth_required"] is False
        m = h["model"]
        assert isinstance(m["name"], str) and m["name"]
        assert isinstance(m["n_params"], int) and m["n_params"] > 0
        assert m["size_bytes"] == os.path.getsize(MODEL)
        assert isinstance(m["n_ctx_train"], int) and m["n_ctx_train"] > 0
        assert h["limits"] == {"max_message_bytes": 1 << 20, "max_sessions_per_client": 2,
                               "max_sessions": 3, "n_ctx_per_session": 256,
                               "cache_type_k": "f16", "cache_type_v": "f16",
                               "flash_attn": "auto"}
        assert "id" not in h
        await c.close()
    run(body())


def test_hello_default_limits(server):
    async def body():
        c = await connect(server)
        lim = c.hello["limits"]
        assert lim["max_message_bytes"] == 1048576
        assert lim["n_ctx_per_session"] == 2048
        # per-client default is --max-sessions (8)
        assert lim["max_sessions_per_client"] == 8
        await c.close()
    run(body())


@needs_stories
def test_hello_model_facts_stories(server):
    async def body():
        c = await connect(server)
        m = c.hello["model"]
        assert m["size_bytes"] == 1185376
        assert 200_000 < m["n_params"] < 400_000      # "260K"
        assert m["n_ctx_train"] == 2048
        await c.close()
    run(body())


# ------------------------------------------------------------------- HTTP

def test_health_ok(server):
    status, body = http_get(server.port, "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "state": "ready"}


def test_unknown_http_path_is_404(server):
    status, _ = http_get(server.port, "/nope")
    assert status == 404
    status, _ = http_get(server.port, "/health/x")
    assert status == 404


# --------------------------------------------------------------- sessions

def test_create_session_reports_n_ctx(start_server):
    srv = start_server(["--ctx-size", 128])

    async def body():
        c = await connect(srv)
        r = await c.request({"type": "CREATE_SESSION", "id": "c1"})
        assert r["type"] == "SESSION_CREATED" and r["id"] == "c1"
        assert r["n_ctx"] == 128
        assert isinstance(r["session_id"], str) and r["session_id"]
        r2 = await c.request({"type": "CREATE_SESSION"})
        assert r2["session_id"] != r["session_id"]
        assert "id" not in r2
        await c.close()
    run(body())


def test_server_capacity(start_server):
    srv = start_server(["--max-sessions", 2, "--max-sessions-per-client", 4])

    async def body():
        c = await connect(srv)
        s1 = await c.create_session()
        await c.create_session()
        r = await c.request({"type": "CREATE_SESSION", "id": 3})
        assert r["type"] == "ERROR" and r["code"] == "capacity", r
        assert r["id"] == 3
        # a second connection is refused too: the limit is server-wide
        c2 = await connect(srv)
        r = await c2.request({"type": "CREATE_SESSION"})
        assert r["code"] == "capacity", r
        # closing one frees a place
        r = await c.request({"type": "CLOSE_SESSION", "session_id": s1})
        assert r["type"] == "SESSION_CLOSED", r
        await c2.create_session()
        await c.close()
        await c2.close()
    run(body())


def test_close_idle_session(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        r = await c.request({"type": "CLOSE_SESSION", "session_id": sid, "id": "bye"})
        assert r == {"type": "SESSION_CLOSED", "id": "bye", "session_id": sid,
                     "reason": "client"}
        for msg in ({"type": "INFER", "session_id": sid, "prompt": "x"},
                    {"type": "ABORT", "session_id": sid},
                    {"type": "CLOSE_SESSION", "session_id": sid}):
            r = await c.request(msg)
            assert r["type"] == "ERROR" and r["code"] == "session_not_found", r
        m = await c.metrics()
        assert m["sessions"] == []
        await c.close()
    run(body())


def test_close_session_while_generating_ends_with_abort_first(vserver):
    async def body():
        c = await connect(vserver)
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", id="gen", **LONG)
        first = await c.recv()
        assert first["type"] == "TOKEN", first
        await c.send({"type": "CLOSE_SESSION", "session_id": sid, "id": "close"})
        seen = []
        while True:
            m = await c.recv()
            seen.append(m)
            if m["type"] == "SESSION_CLOSED":
                break
        types = [m["type"] for m in seen]
        assert types.count("END") == 1, types
        end = seen[types.index("END")]
        assert end["reason"] == "abort" and end["id"] == "gen"
        assert all(t == "TOKEN" for t in types[:types.index("END")])
        assert types.index("END") == len(types) - 2, "END must come right before SESSION_CLOSED"
        closed = seen[-1]
        assert closed["reason"] == "client" and closed["id"] == "close"
        assert closed["session_id"] == sid
        await c.expect_silence(0.3)
        await c.close()
    run(body())


# ------------------------------------------------------------------ INFER

@needs_stories
def test_infer_streams_story_tokens(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=12, **GREEDY)
        assert res.error is None, res.error
        assert [t["index"] for t in res.tokens] == list(range(12))
        assert [t["text"] for t in res.tokens] == STORY_TOKENS
        assert res.text == STORY_12
        assert res.reason == "length"
        rid = res.end["request_id"]
        assert isinstance(rid, str) and rid
        for t in res.tokens:
            assert t["session_id"] == sid and t["request_id"] == rid
            assert "id" not in t
        await c.close()
    run(body())


def test_end_stats_fields(vserver):
    async def body():
        c = await connect(vserver)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=8, ignore_eos=True, **GREEDY)
        end = res.end
        assert end is not None, res.error
        assert end["session_id"] == sid
        assert end["reason"] == "length"
        st = end["stats"]
        assert set(st) == {"prompt_tokens", "context_tokens", "generated_tokens", "queue_ms",
                           "ttft_ms", "total_ms", "tokens_per_second", "prompt_tokens_per_second"}
        assert isinstance(st["prompt_tokens"], int) and st["prompt_tokens"] > 0
        assert st["context_tokens"] >= st["prompt_tokens"]
        assert st["generated_tokens"] == 8 == len(res.tokens)
        for k in ("queue_ms", "ttft_ms", "total_ms", "tokens_per_second",
                  "prompt_tokens_per_second"):
            assert isinstance(st[k], (int, float)) and st[k] >= 0, (k, st)
        assert st["queue_ms"] <= st["ttft_ms"] <= st["total_ms"]
        assert st["tokens_per_second"] > 0
        await c.close()
    run(body())


def test_request_ids_differ_between_infers(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        a = await c.infer(sid, "One day", max_tokens=2, ignore_eos=True, **GREEDY)
        b = await c.infer(sid, " then", max_tokens=2, ignore_eos=True, **GREEDY)
        assert a.end["request_id"] != b.end["request_id"]
        assert [t["index"] for t in b.tokens] == [0, 1], "index restarts at 0 per INFER"
        await c.close()
    run(body())


@pytest.mark.parametrize("msg_id", ["req-7 ✓", 42, -3, 0, "x" * 64])
def test_id_echoed_in_every_reply(server, msg_id):
    async def body():
        c = await connect(server)
        r = await c.request({"type": "CREATE_SESSION", "id": msg_id})
        assert r["type"] == "SESSION_CREATED" and r["id"] == msg_id
        sid = r["session_id"]
        res = await c.infer(sid, "Once upon a time", id=msg_id, max_tokens=4, ignore_eos=True,
                            **GREEDY)
        assert res.end and res.end["id"] == msg_id
        assert len(res.tokens) == 4
        assert all(t["id"] == msg_id for t in res.tokens)
        r = await c.request({"type": "METRICS", "id": msg_id})
        assert r["type"] == "METRICS" and r["id"] == msg_id
        r = await c.request({"type": "ABORT", "session_id": sid, "id": msg_id})
        assert r["code"] == "not_running" and r["id"] == msg_id
        r = await c.request({"type": "INFER", "session_id": "s99999", "prompt": "x",
                             "id": msg_id})
        assert r["code"] == "session_not_found" and r["id"] == msg_id
        r = await c.request({"type": "WHAT", "id": msg_id})
        assert r["code"] == "unknown_type" and r["id"] == msg_id
        r = await c.request({"type": "CLOSE_SESSION", "session_id": sid, "id": msg_id})
        assert r["type"] == "SESSION_CLOSED" and r["id"] == msg_id
        await c.close()
    run(body())


def test_id_type_preserved_string_vs_int(server):
    async def body():
        c = await connect(server)
        r = await c.request({"type": "METRICS", "id": "5"})
        assert r["id"] == "5"
        r = await c.request({"type": "METRICS", "id": 5})
        assert r["id"] == 5 and isinstance(r["id"], int)
        await c.close()
    run(body())


@pytest.mark.parametrize("bad_id", ["x" * 65, "\u00e9" * 33, 1.5, True, [1], {"a": 1}])
def test_bad_id_is_bad_request(server, bad_id):
    async def body():
        c = await connect(server)
        r = await c.request({"type": "METRICS", "id": bad_id})
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        assert "'id'" in r["message"]
        assert "id" not in r
        await c.close()
    run(body())


def test_busy_while_running(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", id="first", **LONG)
        await c.send({"type": "INFER", "session_id": sid, "prompt": "again", "id": "second"})
        busy = None
        while busy is None:
            m = await c.recv()
            if m["type"] == "ERROR":
                busy = m
            else:
                assert m["type"] == "TOKEN" and m["id"] == "first", m
        assert busy["code"] == "busy" and busy["id"] == "second"
        assert busy["session_id"] == sid
        await c.send({"type": "ABORT", "session_id": sid})
        res = await c.collect(sid)
        assert res.reason == "abort" and res.end["id"] == "first"
        await c.close()
    run(body())


def test_abort_running_generation(vserver):
    async def body():
        c = await connect(vserver)
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", id="g", **LONG)
        first = await c.recv()
        assert first["type"] == "TOKEN"
        await c.send({"type": "ABORT", "session_id": sid, "id": "a"})
        res = await c.collect(sid)
        assert res.reason == "abort"
        assert res.end["id"] == "g", "END answers the INFER, so it carries the INFER's id"
        n = 1 + len(res.tokens)
        assert res.end["stats"]["generated_tokens"] == n
        assert n < 100000
        await c.expect_silence(0.3)
        # the session is idle again and usable
        r = await c.request({"type": "ABORT", "session_id": sid})
        assert r["code"] == "not_running"
        res = await c.infer(sid, " The end", max_tokens=3, ignore_eos=True, **GREEDY)
        assert res.reason == "length" and len(res.tokens) == 3
        await c.close()
    run(body())


def test_abort_when_idle_is_not_running(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        r = await c.request({"type": "ABORT", "session_id": sid, "id": 1})
        assert r["type"] == "ERROR" and r["code"] == "not_running"
        assert r["session_id"] == sid and r["id"] == 1
        res = await c.infer(sid, "Hi", max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        r = await c.request({"type": "ABORT", "session_id": sid})
        assert r["code"] == "not_running", "finished generations are not running"
        await c.close()
    run(body())


@pytest.mark.parametrize("sid", ["s999999", "nope", "", "s0", "s1x", "S1"])
def test_unknown_session_id(server, sid):
    async def body():
        c = await connect(server)
        await c.create_session()          # s1 exists; the others do not
        for t in ("INFER", "ABORT", "CLOSE_SESSION"):
            r = await c.request({"type": t, "session_id": sid, "prompt": "x"})
            assert r["type"] == "ERROR" and r["code"] == "session_not_found", (t, r)
        await c.close()
    run(body())


def test_other_clients_session_is_not_found(server):
    async def body():
        a = await connect(server)
        b = await connect(server)
        sa = await a.create_session()
        for t in ("INFER", "ABORT", "CLOSE_SESSION"):
            r = await b.request({"type": t, "session_id": sa, "prompt": "x"})
            assert r["type"] == "ERROR" and r["code"] == "session_not_found", (t, r)
        # a's session is untouched by b's attempts
        res = await a.infer(sa, "Once", max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        mb = await b.metrics()
        assert mb["sessions"] == []
        ma = await a.metrics()
        assert [s["session_id"] for s in ma["sessions"]] == [sa]
        await a.close()
        await b.close()
    run(body())


def test_prompt_too_long(start_server, any_model):
    srv = start_server(["--ctx-size", 64], model=any_model)

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        long_prompt = " ".join(["the little dog ran to the big tree"] * 20)
        res = await c.infer(sid, long_prompt, id="long", max_tokens=4, **GREEDY)
        e = res.error
        assert e is not None and res.end is None, res.messages
        assert e["code"] == "prompt_too_long"
        assert e["session_id"] == sid and e["id"] == "long"
        nums = [int(x) for x in re.findall(r"\d+", e["message"])]
        assert 64 in nums, e["message"]
        assert any(n > 64 for n in nums), e["message"]
        # the refused prompt leaves the session usable
        res = await c.infer(sid, "Once upon a time", max_tokens=4, ignore_eos=True, **GREEDY)
        assert res.reason == "length" and len(res.tokens) == 4
        await c.close()
    run(body())


def test_context_full_ends_generation(start_server):
    srv = start_server(["--ctx-size", 64])

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=1000, ignore_eos=True, **GREEDY)
        assert res.reason == "context_full", res.end
        st = res.end["stats"]
        assert st["prompt_tokens"] + st["generated_tokens"] <= 64 + 1
        assert st["generated_tokens"] == len(res.tokens)
        await c.close()
    run(body())


# ----------------------------------------------------------- stop strings

@needs_stories
@pytest.mark.parametrize("stop,expected", [
    ([" named"], ", there was a little girl"),
    (["irl na"], ", there was a little g"),        # spans three tokens
    (["Lily", "little"], ", there was a "),         # the earliest match wins
    (["zzz", ". She"], ", there was a little girl named Lily"),
])
def test_stop_string_ends_and_is_not_sent(server, stop, expected):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=24, stop=stop, **GREEDY)
        assert res.reason == "stop_string", res.end
        assert res.text == expected
        for s in stop:
            assert s not in res.text
        assert [t["index"] for t in res.tokens] == list(range(len(res.tokens)))
        assert res.end["stats"]["generated_tokens"] == len(res.tokens)
        await c.close()
    run(body())


@needs_stories
def test_partial_stop_match_is_released(server):
    """Text held back for a possible stop string comes out once it cannot
    match: the joined TOKEN texts are exactly the text without stops."""
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        res = await c.infer(sid, "Once upon a time", max_tokens=12, stop=["girl X"], **GREEDY)
        assert res.reason == "length"
        assert res.text == STORY_12
        assert len(res.tokens) == 12
        assert any(t["text"] == "" for t in res.tokens), "'gir', 'l' should be held back"
        await c.close()
    run(body())


@needs_stories
def test_session_default_params_apply(server):
    """CREATE_SESSION params are defaults for its INFERs; INFER params win."""
    async def body():
        c = await connect(server)
        sid = await c.create_session(params={"max_tokens": 3, "temperature": 0,
                                             "stop": [" little"]})
        res = await c.infer(sid, "Once upon a time")
        assert res.reason == "length" and res.text == ", there was"
        sid2 = await c.create_session(params={"max_tokens": 24, "temperature": 0,
                                              "stop": [" little"]})
        res = await c.infer(sid2, "Once upon a time")
        assert res.reason == "stop_string" and res.text == ", there was a"
        res = await c.infer(sid2, "Once upon a time", max_tokens=2)
        assert res.reason == "length" and len(res.tokens) == 2
        await c.close()
    run(body())


# -------------------------------------------------------- raw/chat, system

def test_chat_and_raw_modes_differ_and_do_not_mix(vserver):
    async def body():
        c = await connect(vserver)
        chat = await c.create_session()
        raw = await c.create_session()
        rc = await c.infer(chat, "Tell me a story", raw=False, max_tokens=3, ignore_eos=True,
                           **GREEDY)
        rr = await c.infer(raw, "Tell me a story", raw=True, max_tokens=3, ignore_eos=True,
                           **GREEDY)
        assert rc.reason == rr.reason == "length"
        # the chat template wraps the prompt: more prompt tokens than raw
        assert rc.end["stats"]["prompt_tokens"] > rr.end["stats"]["prompt_tokens"]
        # a session's first INFER fixes its mode
        res = await c.infer(chat, "more", raw=True, id="m1", max_tokens=2)
        assert res.error and res.error["code"] == "bad_request", res.messages
        assert res.error["session_id"] == chat and res.error["id"] == "m1"
        res = await c.infer(raw, "more", raw=False, id="m2", max_tokens=2)
        assert res.error and res.error["code"] == "bad_request", res.messages
        assert res.error["session_id"] == raw and res.error["id"] == "m2"
        # both still work in their own mode
        res = await c.infer(chat, "more", raw=False, max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        res = await c.infer(raw, " more", raw=True, max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.reason == "length"
        await c.close()
    run(body())


def test_refused_first_infer_does_not_fix_the_mode(start_server):
    """A first INFER refused with prompt_too_long is forgotten, so it cannot
    have fixed the session's mode: a chat INFER must still work."""
    srv = start_server(["--ctx-size", 64])

    async def body():
        c = await connect(srv)
        sid = await c.create_session()
        res = await c.infer(sid, "dog " * 100, raw=True, max_tokens=2)
        assert res.error and res.error["code"] == "prompt_too_long"
        res = await c.infer(sid, "hi", raw=False, max_tokens=2, ignore_eos=True, **GREEDY)
        assert res.error is None, res.error
        assert res.reason == "length"
        await c.close()
    run(body())


def test_raw_defaults_to_false(server):
    async def body():
        c = await connect(server)
        a = await c.create_session()
        b = await c.create_session()
        await c.send({"type": "INFER", "session_id": a, "prompt": "Hello",
                      "params": {"max_tokens": 1, "ignore_eos": True, "temperature": 0}})
        ra = await c.collect(a)
        rb = await c.infer(b, "Hello", raw=False, max_tokens=1, ignore_eos=True, **GREEDY)
        assert ra.end["stats"]["prompt_tokens"] == rb.end["stats"]["prompt_tokens"]
        # and a is now a chat session
        res = await c.infer(a, "x", raw=True, max_tokens=1)
        assert res.error and res.error["code"] == "bad_request"
        await c.close()
    run(body())


@needs_stories
def test_system_prompt_is_prepended_in_raw_mode(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session(system="Once upon a")
        res = await c.infer(sid, " time", max_tokens=12, **GREEDY)
        assert res.text == STORY_12
        await c.close()
    run(body())


def test_system_prompt_is_part_of_chat(vserver):
    async def body():
        c = await connect(vserver)
        plain = await c.create_session()
        # Long enough to outweigh a template's own default system prompt
        # (Qwen 2.5's Jinja template puts "You are Qwen, ..." in without one).
        withsys = await c.create_session(system="You are a storyteller for small children. " * 6)
        a = await c.infer(plain, "Hi", raw=False, max_tokens=1, ignore_eos=True, **GREEDY)
        b = await c.infer(withsys, "Hi", raw=False, max_tokens=1, ignore_eos=True, **GREEDY)
        assert b.end["stats"]["prompt_tokens"] > a.end["stats"]["prompt_tokens"] + 5
        await c.close()
    run(body())


@needs_stories
def test_raw_conversation_continues_across_infers(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        a = await c.infer(sid, "Once upon a time", max_tokens=5, **GREEDY)
        assert a.text == ", there was a little"
        used1 = (await c.metrics())["sessions"][0]["n_ctx_used"]
        b = await c.infer(sid, " girl", max_tokens=4, **GREEDY)
        assert b.text == " named Lily. She"
        used2 = (await c.metrics())["sessions"][0]["n_ctx_used"]
        assert used2 > used1
        # only the new text was decoded, not the whole conversation again
        assert b.end["stats"]["prompt_tokens"] < used1 - 4
        await c.close()
    run(body())


def test_chat_conversation_keeps_turns(vserver):
    async def body():
        c = await connect(vserver)
        sid = await c.create_session()
        a = await c.infer(sid, "Hello there", raw=False, max_tokens=4, ignore_eos=True,
                          **GREEDY)
        used1 = (await c.metrics())["sessions"][0]["n_ctx_used"]
        b = await c.infer(sid, "And then?", raw=False, max_tokens=4, ignore_eos=True, **GREEDY)
        used2 = (await c.metrics())["sessions"][0]["n_ctx_used"]
        assert a.reason == b.reason == "length"
        assert used2 > used1 >= a.end["stats"]["prompt_tokens"]
        # a fresh session with the same second prompt has a shorter prompt
        fresh = await c.create_session()
        f = await c.infer(fresh, "And then?", raw=False, max_tokens=1, ignore_eos=True,
                          **GREEDY)
        assert used2 > f.end["stats"]["prompt_tokens"] + 4
        await c.close()
    run(body())


def test_empty_and_whitespace_prompts(start_server, any_model):
    """An empty or all-whitespace prompt, raw or chat, with or without a
    system prompt, gets a clear answer (a generation, or ERROR bad_request
    for that INFER) and the session stays usable. Vocabularies without a BOS
    (qwen2, gpt-2) make an empty raw prompt 0 tokens."""
    srv = start_server(model=any_model)        # its own: a crash must not spread

    async def body():
        c = await connect(srv)
        for raw in (True, False):
            for system in (None, "You are a storyteller."):
                for prompt in ("", " ", "\n\n", " \t "):
                    fields = {"system": system} if system else {}
                    sid = await c.create_session(**fields)
                    res = await c.infer(sid, prompt, raw=raw, id="e", max_tokens=2,
                                        **GREEDY)
                    what = (raw, system, prompt)
                    if res.error is not None:
                        assert res.error["code"] == "bad_request", (what, res.error)
                        assert res.error["id"] == "e" and res.error["session_id"] == sid
                    else:
                        assert res.reason in ("length", "eos"), (what, res.end)
                        assert res.end["stats"]["generated_tokens"] == len(res.tokens)
                    res = await c.infer(sid, " Hello there", raw=raw, max_tokens=2,
                                        ignore_eos=True, **GREEDY)
                    assert res.reason == "length", (what, res.messages)
                    r = await c.request({"type": "CLOSE_SESSION", "session_id": sid})
                    assert r["type"] == "SESSION_CLOSED", r
        await c.close()
    run(body(), timeout=120)


def test_multibyte_text_streams_as_valid_utf8(vserver):
    """Emoji and CJK in, random sampling out: byte-level vocabularies cut
    characters across tokens, and every TOKEN text must still be valid UTF-8
    (held back or U+FFFD), one TOKEN per generated token."""
    async def body():
        c = await connect(vserver)
        for raw in (True, False):
            sid = await c.create_session()
            res = await c.infer(sid, "🦙🔥 日本語 héllo 👩‍👩‍👧", raw=raw, max_tokens=48,
                                ignore_eos=True, temperature=2, seed=7)
            assert res.reason == "length", res.messages
            assert len(res.tokens) == 48 == res.end["stats"]["generated_tokens"]
            for t in res.tokens:
                t["text"].encode("utf-8")       # no lone surrogates
            res.text.encode("utf-8")
        await c.close()
    run(body(), timeout=120)


def test_priority_param_accepted(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        for p in ("low", "normal", "high"):
            res = await c.infer(sid, "x", max_tokens=1, ignore_eos=True, priority=p, **GREEDY)
            assert res.reason == "length", res.messages
        res = await c.infer(sid, "x", max_tokens=1, priority="urgent")
        assert res.error and res.error["code"] == "bad_request"
        assert "params.priority" in res.error["message"]
        await c.close()
    run(body())


# ---------------------------------------------------------------- METRICS

def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def test_metrics_fields(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        await c.infer(sid, "Once upon a time", max_tokens=3, ignore_eos=True, **GREEDY)
        m = await c.request({"type": "METRICS", "id": "m"})
        assert m["type"] == "METRICS" and m["id"] == "m"
        assert isinstance(m["timestamp_ms"], int)
        assert abs(m["timestamp_ms"] - time.time() * 1000) < 60_000
        e = m["engine"]
        assert e["state"] in ("loading", "ready", "throttled", "sleeping")
        assert e["state"] == "ready"
        assert e["sessions"] == 1 and e["generating"] == 0 and e["queued"] == 0
        for k in ("sessions", "generating", "queued", "kv_cells_used", "kv_cells_total",
                  "n_gpu_layers"):
            assert isinstance(e[k], int), k
        assert _is_num(e["tokens_per_second"])
        assert 0 < e["kv_cells_used"] <= e["kv_cells_total"]
        assert e["n_gpu_layers"] == 0
        assert m["gpus"] == []
        s = m["system"]
        assert _is_num(s["cpu_pct"]) and 0 <= s["cpu_pct"] <= 100 * os.cpu_count()
        assert isinstance(s["ram_total_bytes"], int) and s["ram_total_bytes"] > 0
        assert 0 < s["ram_used_bytes"] <= s["ram_total_bytes"]
        assert m["sessions"] == [{"session_id": sid, "state": "idle",
                                  "n_ctx_used": m["sessions"][0]["n_ctx_used"]}]
        assert m["sessions"][0]["n_ctx_used"] >= 4
        await c.close()
    run(body())


def test_metrics_lists_only_own_sessions(server):
    async def body():
        a = await connect(server)
        b = await connect(server)
        sa = {await a.create_session() for _ in range(2)}
        sb = {await b.create_session() for _ in range(3)}
        ma = await a.metrics()
        mb = await b.metrics()
        assert {s["session_id"] for s in ma["sessions"]} == sa
        assert {s["session_id"] for s in mb["sessions"]} == sb
        assert ma["engine"]["sessions"] == mb["engine"]["sessions"] == 5
        await a.close()
        await b.close()
    run(body())


def test_metrics_session_state_while_generating(server):
    async def body():
        c = await connect(server)
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", **LONG)
        assert (await c.recv())["type"] == "TOKEN"
        await c.send({"type": "METRICS", "id": "m"})
        while True:
            m = await c.recv()
            if m["type"] == "METRICS":
                break
        assert m["sessions"][0]["state"] in ("prefill", "generating", "queued")
        assert m["engine"]["generating"] >= 1
        await c.send({"type": "ABORT", "session_id": sid})
        res = await c.collect(sid)
        assert res.reason == "abort"
        await c.close()
    run(body())


@pytest.mark.parametrize("interval", [1, 100, 249, -1, "500", 2.5, None])
def test_subscribe_metrics_bad_interval(server, interval):
    async def body():
        c = await connect(server)
        msg = {"type": "SUBSCRIBE_METRICS", "id": "sub"}
        if interval is not None:
            msg["interval_ms"] = interval
        r = await c.request(msg)
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        assert "interval_ms" in r["message"] and r["id"] == "sub"
        await c.expect_silence(0.4)
        await c.close()
    run(body())


def test_subscribe_metrics_pushes_and_stops(server):
    async def body():
        c = await connect(server)
        t0 = time.monotonic()
        await c.send({"type": "SUBSCRIBE_METRICS", "interval_ms": 250, "id": "sub"})
        times = []
        while len(times) < 4:
            m = await c.recv(5)
            assert m["type"] == "METRICS" and m["id"] == "sub", m
            times.append(time.monotonic() - t0)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g > 0.15 for g in gaps), gaps
        assert times[-1] < 3.0, times
        # other requests still answered in between
        r = await c.request({"type": "CREATE_SESSION", "id": "cs"})
        while r["type"] == "METRICS":
            r = await c.recv()
        assert r["type"] == "SESSION_CREATED"
        await c.send({"type": "SUBSCRIBE_METRICS", "interval_ms": 0})
        # at most one push may already be under way
        try:
            await asyncio.wait_for(c.ws.recv(), 0.35)
        except asyncio.TimeoutError:
            pass
        await c.expect_silence(0.8)
        await c.close()
    run(body())
