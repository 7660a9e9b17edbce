"""Protocol v1's chat-layer additions over the WebSocket.

- INFER `grammar` (GBNF) and `json_schema`: the answer is constrained; a
  grammar or schema that does not compile is ERROR bad_request naming the
  problem, and the session goes on.
- Chat mode renders the conversation with the model's own Jinja template
  (the chat module, as llama-server does): each turn's context is exactly
  the tokens of the Jinja rendering of the conversation so far (checked
  against ic-chat-render + llama-tokenize), also for a template that
  llama_chat_apply_template refuses (Gemma 4), and turn 2 reuses the KV of
  turn 1.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import IC_TEST_MODELS, IC_MKMODEL, connect, run
from test_templates import PREFIX

CHAT_RENDER = os.environ.get("IC_CHAT_RENDER", str(Path(IC_MKMODEL).parent / "ic-chat-render"))
TOKENIZE = PREFIX / "bin" / "llama-tokenize"

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}


def person_ok(text):
    v = json.loads(text)
    return (isinstance(v, dict) and sorted(v) == ["age", "name"] and isinstance(v["name"], str)
            and len(v["name"]) <= 8 and isinstance(v["age"], int) and 0 <= v["age"] <= 120)


def test_grammar_and_json_schema_constrain_the_answer(server):
    async def go():
        c = await connect(server)
        sid = await c.create_session()
        for seed in range(1, 9):
            await c.send({"type": "INFER", "session_id": sid, "prompt": "Answer:", "raw": True,
                          "grammar": 'root ::= "yes" | "no"',
                          "params": {"temperature": 1.0, "seed": seed, "max_tokens": 50}})
            r = await c.collect(sid)
            assert r.error is None, r.error
            assert r.text in ("yes", "no"), r.text
            assert r.reason == "eos"
        sid2 = await c.create_session()
        for seed in range(1, 21):
            await c.send({"type": "INFER", "session_id": sid2, "prompt": "Person:", "raw": True,
                          "json_schema": PERSON,
                          "params": {"temperature": 1.0, "seed": seed, "max_tokens": 200}})
            r = await c.collect(sid2)
            assert r.error is None, r.error
            assert r.reason == "eos", r.text
            assert person_ok(r.text), r.text
        await c.close()
    run(go())


def test_bad_grammar_or_schema_is_bad_request_naming_the_problem(server):
    async def go():
        c = await connect(server)
        sid = await c.create_session()
        cases = [
            ({"grammar": "root ::= undefined_rule"}, "grammar"),
            ({"grammar": "root ::= ("}, "grammar"),
            ({"grammar": ""}, "grammar"),
            ({"json_schema": {"type": "frobnicate"}}, "Unrecognized schema"),
            ({"json_schema": {"$ref": "#/definitions/none"}}, "definitions"),
            ({"json_schema": {"type": "string", "pattern": "[a-z]+"}}, "not anchored"),
            ({"json_schema": "not an object"}, "json_schema"),
            ({"grammar": 'root ::= "a"', "json_schema": {"type": "object"}}, "not both"),
        ]
        for i, (extra, why) in enumerate(cases):
            await c.send({"type": "INFER", "session_id": sid, "prompt": "x", "raw": True,
                          "id": i, "params": {"max_tokens": 4}, **extra})
            m = await c.recv_type("ERROR", "END", "TOKEN")
            assert m["type"] == "ERROR", (extra, m)
            assert m["code"] == "bad_request", m
            assert why in m["message"], m
            assert m.get("id") == i, m
        # Nothing was lost: the session answers, unconstrained as asked.
        r = await c.infer(sid, "Once", raw=True, max_tokens=3)
        assert r.error is None and r.reason == "length"
        await c.close()
    run(go())


def _rendered_tokens(model, messages):
    """Token count of the conversation as the chat module renders it (with
    the assistant's turn opened), tokenized as the model's vocabulary does."""
    req = Path(os.environ.get("TMPDIR", "/tmp")) / f"ic-chat-ws-{os.getpid()}.json"
    req.write_text(json.dumps({"messages": messages}))
    out = subprocess.run([CHAT_RENDER, "--model", str(model), str(req)], check=True,
                         capture_output=True, text=True).stdout
    prompt = json.loads(out)["prompt"]
    req.write_text(prompt)
    ids = subprocess.run([str(TOKENIZE), "-m", str(model), "-f", str(req), "--ids",
                          "--log-disable"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    req.unlink()
    return len(json.loads(ids))


@pytest.mark.parametrize("name", ["gemma-4", "qwen2", "llama-bpe"])
def test_chat_mode_renders_the_jinja_template_and_reuses_kv(start_server, name):
    model = IC_TEST_MODELS / f"vocab-{name}.gguf"
    if not model.exists() or not TOKENIZE.exists() or not Path(CHAT_RENDER).exists():
        pytest.skip("needs the vocab models, ic-chat-render and llama-tokenize")
    server = start_server(model=str(model))

    async def go():
        c = await connect(server)
        system = "You are terse."
        sid = await c.create_session(system=system)
        msgs = [{"role": "system", "content": system}]
        for turn, prompt in enumerate(["Hello there", "And then?", "Thanks"]):
            msgs.append({"role": "user", "content": prompt})
            r = await c.infer(sid, prompt, raw=False, temperature=0, max_tokens=6)
            assert r.error is None, r.error
            st = r.end["stats"]
            assert st["context_tokens"] == _rendered_tokens(model, msgs), (turn, st)
            if turn > 0:  # the earlier turns came from the KV cache
                assert st["prompt_tokens"] < st["context_tokens"] // 2, st
            msgs.append({"role": "assistant", "content": r.text})
        await c.close()
    run(go())


def test_generate_chat_goes_through_the_same_template(start_server):
    """`inferencecenter generate --chat` renders with the chat module: its
    greedy reply equals chat mode's over the WebSocket; --json-schema
    answers validate; a bad schema is refused by name."""
    from conftest import IC_BIN
    model = IC_TEST_MODELS / "vocab-qwen2.gguf"
    if not model.exists():
        pytest.skip("needs vocab-qwen2.gguf")
    gen = [IC_BIN, "generate", "-m", str(model), "--threads", "1", "--chat"]
    out = subprocess.run(gen + ["--system", "Be terse.", "-p", "Hello there", "-t", "0",
                                "-n", "12"], check=True, capture_output=True, text=True).stdout
    server = start_server(model=str(model))

    async def go():
        c = await connect(server)
        sid = await c.create_session(system="Be terse.")
        r = await c.infer(sid, "Hello there", raw=False, temperature=0, max_tokens=12)
        await c.close()
        return r.text
    assert out[:-1] == run(go())  # generate ends with a newline
    for seed in range(1, 6):
        out = subprocess.run(gen + ["-p", "Person?", "-t", "1", "-s", str(seed), "-n", "300",
                                    "--json-schema", json.dumps(PERSON)],
                             check=True, capture_output=True, text=True).stdout
        assert person_ok(out), out
    bad = subprocess.run(gen + ["-p", "x", "--json-schema", '{"type":"frob"}'],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "Unrecognized schema" in bad.stderr
