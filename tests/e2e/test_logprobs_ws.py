"""INFER params.logprobs over the WebSocket protocol: TOKEN events carry
logprob, token {id, text, bytes, logprob} and top_logprobs (docs/protocol.md);
without the param a TOKEN is as before. The values are those the OpenAI
API gives for the same greedy request on the same server."""
import json
import urllib.request

from conftest import GREEDY, connect, needs_stories, run


async def tokens(srv, prompt, n, **params):
    c = await connect(srv)
    sid = await c.create_session()
    r = await c.infer(sid, prompt, max_tokens=n, **{**GREEDY, **params})
    await c.close()
    return r


def completions(srv, body):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@needs_stories
def test_token_events_carry_logprobs(server):
    r = run(tokens(server, "Once upon a time", 16, logprobs=3))
    assert r.error is None, r.messages
    assert len(r.tokens) == r.end["stats"]["generated_tokens"]
    for t in r.tokens:
        top = t["top_logprobs"]
        assert len(top) == 3
        assert all(a["logprob"] >= b["logprob"] for a, b in zip(top, top[1:]))
        assert t["logprob"] <= 0
        # greedy: the sampled token is the most likely, with the same value
        assert t["token"]["id"] == top[0]["id"]
        assert t["token"]["logprob"] == t["logprob"] == top[0]["logprob"]
        assert bytes(t["token"]["bytes"]).decode() == t["token"]["text"]
    # the OpenAI API's values for the same request
    o = completions(server, {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0,
                             "logprobs": 3})
    assert o["choices"][0]["logprobs"]["token_logprobs"] == [t["logprob"] for t in r.tokens]
    assert o["choices"][0]["text"] == r.text


@needs_stories
def test_logprobs_zero_and_off(server):
    r = run(tokens(server, "Once upon a time", 6, logprobs=0))
    assert all(t["top_logprobs"] == [] and t["logprob"] <= 0 for t in r.tokens), r.messages
    plain = run(tokens(server, "Once upon a time", 6))
    assert plain.text == r.text
    for t in plain.tokens + run(tokens(server, "Once upon a time", 6, logprobs=-1)).tokens:
        assert "logprob" not in t and "top_logprobs" not in t and "token" not in t


def test_logprobs_param_range(server):
    for bad in (21, -2, True, "3"):
        r = run(tokens(server, "Once", 2, logprobs=bad))
        assert r.error and r.error["code"] == "bad_request", r.messages
        assert "params.logprobs" in r.error["message"]
