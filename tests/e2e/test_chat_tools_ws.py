"""Protocol v1 tools and reasoning over the WebSocket, on random-weight
GGUFs with real vocabularies and the real chat templates of the pinned
llama.cpp (ic-mkmodel --chat-template):

- CREATE_SESSION / INFER `tools`: a call forced by a client grammar (Qwen
  2.5's Hermes format) comes back in END tool_calls (a name among the
  tools, arguments a JSON string that fits the parameters) with reason
  "tool_calls"; the tool-result turn (INFER `messages`, no prompt) renders
  the kept assistant call and the result (context_tokens equal the chat
  module's rendering of that conversation) and reuses turn 1's KV cache.
- tool_choice "required" samples through the template's own grammar
  (Functionary v3.2's is strict: every sampled reply fits it).
- bad tools (and tools with raw) are ERROR bad_request.
- INFER `reasoning` on a template that opens <think> in the prompt (the
  DeepSeek R1 distills) and on one that leaves it to the model (Qwen 3):
  TOKENs of the block carry "channel":"reasoning", END's reasoning_content
  and content are the two streams' texts; `reasoning_budget` bounds the
  block (its end marker is forced).
- a client that sends none of the new fields sees the old messages.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import IC_MKMODEL, connect, run
from test_templates import SHARE
from test_chat_ws import CHAT_RENDER, TOKENIZE

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                       "properties": {"city": {"type": "string", "enum": ["Oslo"]}}}}}]
NAMES = {"get_weather": ["Paris", "Rome"], "get_time": ["Oslo"]}
SYSTEM = "You are a helpful assistant."


def _make(tmp_path_factory, template, vocab):
    tpl = SHARE / "templates" / f"{template}.jinja"
    voc = SHARE / f"ggml-vocab-{vocab}.gguf"
    if not tpl.exists() or not voc.exists() or not Path(IC_MKMODEL).exists():
        pytest.skip(f"needs {tpl.name}, {voc.name} and ic-mkmodel")
    out = tmp_path_factory.mktemp("models") / f"{template}.gguf"
    subprocess.run([IC_MKMODEL, "--out", str(out), "--vocab", str(voc), "--chat-template",
                    str(tpl), "--embd", "32", "--heads", "2", "--kv-heads", "1", "--ff", "64",
                    "--layers", "1"], check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory):
    return _make(tmp_path_factory, "Qwen-Qwen2.5-7B-Instruct", "qwen2")


@pytest.fixture(scope="module")
def functionary_model(tmp_path_factory):
    return _make(tmp_path_factory, "meetkai-functionary-medium-v3.2", "llama-bpe")


@pytest.fixture(scope="module")
def qwen3_model(tmp_path_factory):
    return _make(tmp_path_factory, "Qwen-Qwen3-0.6B", "qwen2")


@pytest.fixture(scope="module")
def r1_model(tmp_path_factory):
    return _make(tmp_path_factory, "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B", "qwen2")


def rendered_tokens(model, request):
    """Token count of a conversation (an ic-chat-render request) as the
    chat module renders it, tokenized by the model's vocabulary."""
    if not Path(CHAT_RENDER).exists() or not TOKENIZE.exists():
        pytest.skip("needs ic-chat-render and llama-tokenize")
    req = Path(os.environ.get("TMPDIR", "/tmp")) / f"ic-tools-ws-{os.getpid()}.json"
    req.write_text(json.dumps(request))
    out = json.loads(subprocess.run([CHAT_RENDER, "--model", str(model), str(req)], check=True,
                                    capture_output=True, text=True).stdout)
    assert "prompt" in out, out
    req.write_text(out["prompt"])
    ids = subprocess.run([str(TOKENIZE), "-m", str(model), "-f", str(req), "--ids",
                          "--log-disable"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    req.unlink()
    return len(json.loads(ids))


def check_call(call):
    assert call["type"] == "function", call
    assert call["id"], call
    fn = call["function"]
    assert fn["name"] in NAMES, call
    args = json.loads(fn["arguments"])  # a JSON string, as OpenAI's
    assert isinstance(args, dict) and args.get("city") in NAMES[fn["name"]], call
    return fn["name"], args


# Qwen 2.5's (Hermes) call format. llama.cpp's grammar for tool_choice
# "required" lets content come first (any text up to "<tool_call>"), which a
# random-weight model never ends; a client grammar forces the call, and the
# template's parser finds it.
FORCE_CALL = (r'root ::= "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": '
              r'{\"city\": \"" ("Paris" | "Rome") "\"}}\n</tool_call>"')


def test_forced_tool_call_then_tool_result_turn_reuses_kv(start_server, qwen_model):
    server = start_server(model=str(qwen_model))

    async def go():
        c = await connect(server)
        sid = await c.create_session(system=SYSTEM, tools=TOOLS)
        await c.send({"type": "INFER", "session_id": sid, "prompt": "Weather in Paris?",
                      "tool_choice": "required", "id": "t1", "grammar": FORCE_CALL,
                      "params": {"temperature": 0, "max_tokens": 80}})
        r = await c.collect(sid)
        assert r.error is None, r.error
        end = r.end
        assert end["reason"] == "tool_calls", (end, r.text)
        assert end.get("id") == "t1"
        assert len(end["tool_calls"]) >= 1, end
        calls = [check_call(tc) for tc in end["tool_calls"]]
        assert "<tool_call>" in r.text  # the raw stream is the model's text
        assert all("channel" not in t for t in r.tokens)
        ctx1 = end["stats"]["context_tokens"]

        # The tool's answer; no user turn (prompt absent).
        results = [{"role": "tool", "tool_call_id": tc["id"], "content": "22 C, sunny"}
                   for tc in end["tool_calls"]]
        await c.send({"type": "INFER", "session_id": sid, "messages": results,
                      "tool_choice": "none", "params": {"temperature": 0, "max_tokens": 6}})
        r2 = await c.collect(sid)
        assert r2.error is None, r2.error
        assert r2.reason in ("length", "eos"), r2.end
        assert "tool_calls" not in r2.end
        st = r2.end["stats"]
        convo = [{"role": "system", "content": SYSTEM},
                 {"role": "user", "content": "Weather in Paris?"},
                 {"role": "assistant", "content": end["content"] or None,
                  "tool_calls": end["tool_calls"]}] + results
        for m in convo:
            if m.get("content") is None:
                m.pop("content")
        assert st["context_tokens"] == rendered_tokens(
            qwen_model, {"messages": convo, "tools": TOOLS, "tool_choice": "none"}), st
        # Turn 1's prompt came from the KV cache.
        assert st["prompt_tokens"] <= st["context_tokens"] - ctx1 // 2, (st, ctx1)
        assert st["context_tokens"] > ctx1

        # The conversation goes on with a plain user turn.
        r3 = await c.infer(sid, "Thanks", raw=False, temperature=0, max_tokens=4)
        assert r3.error is None and r3.reason in ("length", "eos", "tool_calls"), r3.end
        assert r3.end["stats"]["prompt_tokens"] < r3.end["stats"]["context_tokens"] // 2
        await c.close()
        return calls
    run(go(), timeout=120)


def test_required_tool_choice_uses_the_templates_grammar(start_server, functionary_model):
    """Functionary v3.2's grammar for tool_choice "required" is strict: the
    answer starts with "all" (text) or a function name and its JSON
    arguments. Sampled at temperature 1, every reply fits it, the calls
    END reports are whole, and the conversation renders them next turn
    (a call cut off by max_tokens is left out)."""
    server = start_server(model=str(functionary_model))

    async def go():
        c = await connect(server)
        n_calls = 0
        for seed in range(6):
            sid = await c.create_session(tools=TOOLS[:1])
            await c.send({"type": "INFER", "session_id": sid, "prompt": "Weather in Paris?",
                          "tool_choice": "required",
                          "params": {"temperature": 1, "seed": seed, "max_tokens": 60}})
            r = await c.collect(sid)
            assert r.error is None, r.error
            assert r.text.startswith(("all\n", "get_weather\n")), r.text
            assert r.reason in ("tool_calls", "length"), r.end
            calls = r.end.get("tool_calls", [])
            for tc in calls:
                check_call(tc)
            assert (r.reason == "tool_calls") == (bool(calls) and r.reason != "length")
            n_calls += len(calls)
            # the next turn renders the kept calls (or the plain text)
            nxt = {"type": "INFER", "session_id": sid, "tool_choice": "none",
                   "params": {"temperature": 0, "max_tokens": 3}}
            if calls:
                nxt["messages"] = [{"role": "tool", "tool_call_id": tc["id"], "content": "22 C"}
                                   for tc in calls]
            else:
                nxt["prompt"] = "Go on"
            await c.send(nxt)
            r2 = await c.collect(sid)
            assert r2.error is None, r2.error
            assert r2.end["stats"]["prompt_tokens"] < r2.end["stats"]["context_tokens"]
            await c.request({"type": "CLOSE_SESSION", "session_id": sid})
        assert n_calls > 0
        await c.close()
    run(go(), timeout=180)


def test_bad_tools_are_bad_request(start_server, qwen_model):
    server = start_server(model=str(qwen_model))

    async def go():
        c = await connect(server)
        r = await c.request({"type": "CREATE_SESSION", "tools": [{"type": "function"}]})
        assert r["type"] == "ERROR" and r["code"] == "bad_request", r
        assert "tools[0].function" in r["message"], r
        sid = await c.create_session()
        fn = {"name": "f", "parameters": {"type": "object"}}
        cases = [
            ({"tools": "get_weather"}, "'tools' must be an array"),
            ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "name"),
            ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]},
             "parameters"),
            ({"tools": [{"type": "function", "function": fn}] * 2}, "defined twice"),
            ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
            ({"tool_choice": "required"}, "needs tools"),
            ({"tools": TOOLS, "raw": True}, "chat mode"),
            ({"messages": [{"role": "user", "content": "x"}]}, "must be \"tool\""),
            ({"reasoning": "yes"}, "'reasoning'"),
            ({"reasoning": False, "reasoning_budget": 3}, "needs reasoning on"),
        ]
        for i, (extra, why) in enumerate(cases):
            msg = {"type": "INFER", "session_id": sid, "prompt": "x", "id": i,
                   "params": {"max_tokens": 2}}
            msg.update(extra)
            await c.send(msg)
            m = await c.recv_type("ERROR", "END", "TOKEN")
            assert m["type"] == "ERROR" and m["code"] == "bad_request", (extra, m)
            assert why in m["message"], (why, m)
            assert m.get("id") == i, m
        r = await c.infer(sid, "Hello", raw=False, temperature=0, max_tokens=3)
        assert r.error is None and r.reason in ("length", "eos"), r.end
        await c.close()
    run(go())


def test_old_clients_see_no_change(start_server, qwen_model, r1_model):
    for model in (qwen_model, r1_model):
        server = start_server(model=str(model))

        async def go():
            c = await connect(server)
            sid = await c.create_session(system=SYSTEM)
            for prompt in ("Hello", "More"):
                r = await c.infer(sid, prompt, raw=False, temperature=0, max_tokens=6)
                assert r.error is None, r.error
                assert all(set(t) <= {"type", "id", "session_id", "request_id", "index", "text"}
                           for t in r.tokens), r.tokens
                assert set(r.end) == {"type", "session_id", "request_id", "reason", "stats"}, r.end
                assert r.reason in ("length", "eos")
            await c.close()
        run(go())
        server.terminate()


def split_stream(r):
    """(reasoning text, content text, channel of each token) of a result."""
    reasoning = "".join(t["text"] for t in r.tokens if t.get("channel") == "reasoning")
    content = "".join(t["text"] for t in r.tokens if "channel" not in t)
    for t in r.tokens:
        assert t.get("channel", "reasoning") == "reasoning", t
    return reasoning, content, [t.get("channel") for t in r.tokens]


def test_reasoning_channel_and_budget(start_server, r1_model):
    server = start_server(model=str(r1_model))

    async def go():
        c = await connect(server)
        sid = await c.create_session(system=SYSTEM)
        # No budget: a random model never closes the block, so every token
        # is reasoning and END's content is empty.
        await c.send({"type": "INFER", "session_id": sid, "prompt": "Think about it",
                      "reasoning": True, "params": {"temperature": 0, "max_tokens": 12}})
        r = await c.collect(sid)
        assert r.error is None, r.error
        reasoning, content, chans = split_stream(r)
        if "</think>" not in r.text:
            assert chans == ["reasoning"] * len(r.tokens), chans
            assert r.end["content"] == ""
        assert r.end["reasoning_content"].strip() == reasoning.split("</think>")[0].strip()
        ctx1 = r.end["stats"]["context_tokens"]

        for budget in (0, 5):
            await c.send({"type": "INFER", "session_id": sid, "prompt": "Again",
                          "reasoning": True, "reasoning_budget": budget,
                          "params": {"temperature": 0, "max_tokens": 30}})
            r = await c.collect(sid)
            assert r.error is None, r.error
            reasoning, content, chans = split_stream(r)
            # The block comes first, then the answer: channels never go back.
            n_think = chans.count("reasoning")
            assert chans == ["reasoning"] * n_think + [None] * (len(chans) - n_think), chans
            # The budget's tokens, then the forced end marker (a few tokens).
            assert "</think>" in reasoning, (budget, r.text)
            assert n_think <= budget + 8, (budget, chans)
            assert n_think >= budget + 1
            assert r.end["reasoning_content"].strip() == reasoning.split("</think>")[0].strip()
            assert r.end["content"].strip() == content.strip()
            assert len(content) > 0
            st = r.end["stats"]
            assert st["context_tokens"] > ctx1
            # earlier turns (as the template renders them) came from the cache
            assert st["prompt_tokens"] < st["context_tokens"], st

        # reasoning off: no block, no channel
        await c.send({"type": "INFER", "session_id": sid, "prompt": "Plain",
                      "reasoning": False, "params": {"temperature": 0, "max_tokens": 5}})
        r = await c.collect(sid)
        assert r.error is None, r.error
        assert all("channel" not in t for t in r.tokens)
        await c.close()
    run(go(), timeout=120)


def test_reasoning_block_the_model_opens(start_server, qwen3_model):
    """Qwen 3 leaves <think> to the model (a grammar makes this one open
    it, spelled in pieces by Qwen 2's vocabulary): the block's TOKENs are on
    the reasoning channel from its first piece, the budget forces </think>
    (which the grammar allows), and END splits as the streams do."""
    server = start_server(model=str(qwen3_model))
    grammar = 'root ::= "<think>" [a-z ]+ "</think>" [a-z ]+'

    async def go():
        c = await connect(server)
        sid = await c.create_session()
        await c.send({"type": "INFER", "session_id": sid, "prompt": "Hi", "reasoning": True,
                      "reasoning_budget": 4, "grammar": grammar,
                      "params": {"temperature": 0, "max_tokens": 24}})
        r = await c.collect(sid)
        assert r.error is None, r.error
        reasoning, content, chans = split_stream(r)
        n_think = chans.count("reasoning")
        assert chans == ["reasoning"] * n_think + [None] * (len(chans) - n_think), (chans, r.text)
        assert reasoning.startswith("<think>") and "</think>" in reasoning, reasoning
        inside = reasoning[len("<think>"):].split("</think>")[0]
        assert r.end["reasoning_content"].strip() == inside.strip()
        assert r.end["content"].strip() == content.strip() and content.strip()
        # at most the budget's tokens inside, then the forced marker
        opening = next(i for i in range(len(r.tokens))
                       if "".join(t["text"] for t in r.tokens[:i + 1]).startswith("<think>"))
        closing = next(i for i in range(len(r.tokens))
                       if "</think>" in "".join(t["text"] for t in r.tokens[:i + 1]))
        assert closing - opening <= 4 + 8, chans
        await c.close()
    run(go())
