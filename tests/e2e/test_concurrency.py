"""Several sessions and clients at once: batching must not change greedy
output, sessions of one client run concurrently, and clients do not see or
slow down each other's work."""
import asyncio
import time

from conftest import GREEDY, LONG, STORY_12, connect, needs_stories, run, wait_metrics

PROMPTS = ["Once upon a time", "Tom and Sue went to the park", "The little dog",
           "One day, a big red ball"]


async def _collect_many(c, sids):
    """TOKENs and ENDs of concurrently running INFERs on one connection."""
    out = {sid: [] for sid in sids}
    ends = {}
    order = []
    while len(ends) < len(sids):
        m = await c.recv(60)
        sid = m.get("session_id")
        assert sid in out, m
        assert sid not in ends, f"message after END: {m}"
        order.append(sid)
        if m["type"] == "TOKEN":
            assert m["index"] == len(out[sid]), m
            out[sid].append(m["text"])
        elif m["type"] == "END":
            ends[sid] = m
        else:
            raise AssertionError(m)
    return {sid: "".join(t) for sid, t in out.items()}, ends, order


@needs_stories
def test_four_concurrent_sessions_match_solo_outputs(server):
    async def body():
        c = await connect(server)
        solo = []
        for p in PROMPTS:
            sid = await c.create_session()
            res = await c.infer(sid, p, max_tokens=24, **GREEDY)
            solo.append(res.text)
            await c.request({"type": "CLOSE_SESSION", "session_id": sid})
        assert solo[0].startswith(STORY_12)
        assert len(set(solo)) == 4
        sids = [await c.create_session() for _ in PROMPTS]
        for sid, p in zip(sids, PROMPTS):
            await c.start_infer(sid, p, max_tokens=24, **GREEDY)
        texts, ends, order = await _collect_many(c, sids)
        for sid, p, want in zip(sids, PROMPTS, solo):
            assert texts[sid] == want, (p, texts[sid], want)
        # they really were interleaved, not run one after another
        switches = sum(1 for a, b in zip(order, order[1:]) if a != b)
        assert switches >= 8, order
        await c.close()
    run(body(), timeout=120)


def test_batched_greedy_matches_solo_on_every_vocabulary(vserver):
    """Greedy output does not depend on batching, whatever the vocabulary:
    four sessions run one by one, then all at once, give the same texts."""
    async def body():
        c = await connect(vserver)
        solo = []
        for p in PROMPTS:
            sid = await c.create_session()
            res = await c.infer(sid, p, max_tokens=16, ignore_eos=True, **GREEDY)
            assert res.reason == "length", res.messages
            solo.append(res.text)
            await c.request({"type": "CLOSE_SESSION", "session_id": sid})
        sids = [await c.create_session() for _ in PROMPTS]
        for sid, p in zip(sids, PROMPTS):
            await c.start_infer(sid, p, max_tokens=16, ignore_eos=True, **GREEDY)
        texts, ends, _ = await _collect_many(c, sids)
        for sid, p, want in zip(sids, PROMPTS, solo):
            assert ends[sid]["reason"] == "length"
            assert texts[sid] == want, (p, texts[sid], want)
        await c.close()
    run(body(), timeout=120)


@needs_stories
def test_concurrent_clients_match_solo_outputs(server):
    async def one(p):
        c = await connect(server)
        sid = await c.create_session()
        res = await c.infer(sid, p, max_tokens=16, **GREEDY)
        await c.close()
        return res.text

    async def body():
        solo = [await one(p) for p in PROMPTS]
        together = await asyncio.gather(*(one(p) for p in PROMPTS))
        assert list(together) == solo
    run(body(), timeout=120)


def test_sessions_of_one_client_run_concurrently(vserver):
    async def body():
        c = await connect(vserver)
        a = await c.create_session()
        b = await c.create_session()
        await c.start_infer(a, "Once upon a time", id="A", **LONG)
        await c.start_infer(b, "The little dog", id="B", **LONG)
        seen = {a: 0, b: 0}
        while min(seen.values()) < 5:
            m = await c.recv()
            assert m["type"] == "TOKEN", m
            assert m["id"] == ("A" if m["session_id"] == a else "B")
            seen[m["session_id"]] += 1
        for sid in (a, b):
            await c.send({"type": "ABORT", "session_id": sid})
        ends = {}
        while len(ends) < 2:
            m = await c.recv()
            if m["type"] == "END":
                ends[m["session_id"]] = m
        assert {e["reason"] for e in ends.values()} == {"abort"}
        assert ends[a]["id"] == "A" and ends[b]["id"] == "B"
        await c.close()
    run(body())


def test_engine_counts_generating_sessions(server):
    async def body():
        c = await connect(server)
        watcher = await connect(server)
        sids = [await c.create_session() for _ in range(3)]
        for sid in sids:
            await c.start_infer(sid, "Once upon a time", **LONG)
        m = await wait_metrics(watcher, lambda m: m["engine"]["generating"] == 3)
        assert m["engine"]["sessions"] == 3
        assert m["sessions"] == []           # the watcher owns none
        assert m["engine"]["tokens_per_second"] >= 0
        for sid in sids:
            await c.send({"type": "ABORT", "session_id": sid})
        ends = 0
        while ends < 3:
            if (await c.recv())["type"] == "END":
                ends += 1
        await wait_metrics(watcher, lambda m: m["engine"]["generating"] == 0)
        await c.close()
        await watcher.close()
    run(body())


def test_abort_of_one_session_leaves_the_other_running(vserver):
    async def body():
        c = await connect(vserver)
        a = await c.create_session()
        b = await c.create_session()
        await c.start_infer(a, "Once upon a time", **LONG)
        await c.start_infer(b, "Once upon a time", max_tokens=40, ignore_eos=True, **GREEDY)
        await c.send({"type": "ABORT", "session_id": a})
        texts, ends, _ = await _collect_many(c, [a, b])
        assert ends[a]["reason"] == "abort"
        assert ends[b]["reason"] == "length"
        assert ends[b]["stats"]["generated_tokens"] == 40
        await c.close()
    run(body())


def test_clients_are_served_while_another_streams(server):
    async def body():
        busy = await connect(server)
        sid = await busy.create_session()
        await busy.start_infer(sid, "Once upon a time", **LONG)
        assert (await busy.recv())["type"] == "TOKEN"
        others = [await connect(server) for _ in range(3)]

        async def short(c):
            s = await c.create_session()
            t0 = time.monotonic()
            res = await c.infer(s, "The little dog", max_tokens=6, ignore_eos=True, **GREEDY)
            assert res.reason == "length" and len(res.tokens) == 6
            return time.monotonic() - t0

        times = await asyncio.gather(*(short(c) for c in others))
        assert max(times) < 15, times
        await busy.send({"type": "ABORT", "session_id": sid})
        res = await busy.collect(sid)
        assert res.reason == "abort"
        for c in [busy, *others]:
            await c.close()
    run(body())


def test_capacity_is_shared_between_clients(start_server, tmp_path):
    from conftest import new_token
    path = tmp_path / "tokens"
    alice = new_token(path, "alice", "--max-sessions", "2")
    bob = new_token(path, "bob", "--max-sessions", "2")
    srv = start_server(["--tokens", path, "--max-sessions", 3])
    srv.secrets += [alice, bob]

    async def body():
        a = await connect(srv, alice)
        b = await connect(srv, bob)
        await a.create_session()
        await a.create_session()
        sb = await b.create_session()
        r = await b.request({"type": "CREATE_SESSION"})
        assert r["type"] == "ERROR" and r["code"] == "capacity", r
        r = await a.request({"type": "CREATE_SESSION"})
        assert r["type"] == "ERROR" and r["code"] == "session_limit", r
        await b.request({"type": "CLOSE_SESSION", "session_id": sb})
        await b.create_session()
        await a.close()
        await b.close()
    run(body())


def test_open_server_limits_each_connection(start_server):
    """Without tokens there are no client identities: each connection is
    its own client for --max-sessions-per-client, and the server-wide
    --max-sessions still caps them all."""
    srv = start_server(["--max-sessions", 4, "--max-sessions-per-client", 2])

    async def body():
        a = await connect(srv)
        b = await connect(srv)
        c = await connect(srv)
        await a.create_session()
        await a.create_session()
        r = await a.request({"type": "CREATE_SESSION"})
        assert r["type"] == "ERROR" and r["code"] == "session_limit", r
        await b.create_session()
        await b.create_session()
        r = await c.request({"type": "CREATE_SESSION"})
        assert r["type"] == "ERROR" and r["code"] == "capacity", r
        await a.close()
        await b.close()
        await c.close()
    run(body())
