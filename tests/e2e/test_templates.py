"""Differential test of the chat module against the pinned llama-server.

For every chat template the bootstrap installs
($LLAMA_PREFIX/share/inferencecenter/templates/*.jinja): a random-weight
GGUF with the matching real vocabulary and the template as
tokenizer.chat_template (ic-mkmodel --chat-template), then the same requests
through llama-server's POST /apply-template (--jinja, on 127.0.0.1) and
through our chat module (ic-chat-render). The prompts must be identical:
  - a 3-turn conversation with a system prompt,
  - the same with tools, an assistant tool call and the tool's answer
    (where the template renders tools, the tool's name must be in the prompt),
  - the 3-turn conversation with reasoning switched off.
A request both sides refuse (the template raises) agrees.

Environment (besides conftest's): IC_LLAMA_PREFIX (default: the bootstrap's
cache for the pinned commit), IC_CHAT_RENDER (default: beside IC_MKMODEL),
IC_TEMPLATES_REPORT (optional path: a JSON summary of every template).
"""
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, free_port

_commit = re.search(r'IC_LLAMA_COMMIT "([0-9a-f]{12})', (ROOT / "CMakeLists.txt").read_text()).group(1)
PREFIX = Path(os.environ.get("IC_LLAMA_PREFIX") or
              Path.home() / ".cache" / "inferencecenter" / f"llama-{_commit}-cpu")
SHARE = PREFIX / "share" / "inferencecenter"
LLAMA_SERVER = PREFIX / "bin" / "llama-server"
MKMODEL = os.environ.get("IC_MKMODEL", str(ROOT / "build" / "ic-mkmodel"))
CHAT_RENDER = os.environ.get("IC_CHAT_RENDER", str(Path(MKMODEL).parent / "ic-chat-render"))
# IC_TEMPLATES_EVERY=N: every Nth template only (the sanitized run).
TEMPLATES = sorted((SHARE / "templates").glob("*.jinja"))[::max(1, int(
    os.environ.get("IC_TEMPLATES_EVERY", "1")))]

pytestmark = pytest.mark.skipif(
    not (LLAMA_SERVER.exists() and Path(CHAT_RENDER).exists() and TEMPLATES),
    reason="needs the pinned llama-server, ic-chat-render and the installed templates")

# Template name (lower case) -> vocabulary, first match wins.
VOCABS = [
    ("qwen3.5", "qwen35"), ("qwen", "qwen2"), ("qwq", "qwen2"), ("distill-qwen", "qwen2"),
    ("mimo", "qwen2"), ("gemma-4", "gemma-4"), ("gemma", "llama-spm"), ("phi-3", "phi-3"),
    ("command-r", "command-r"), ("cohere", "command-r"), ("deepseek-v", "deepseek-llm"),
    ("deepseek-r1.", "deepseek-llm"), ("llama-cpp-deepseek", "deepseek-llm"),
    ("mistral", "llama-spm"), ("ministral", "llama-spm"), ("devstral", "llama-spm"),
    ("rwkv", "llama-spm"),
]


def vocab_for(template):
    name = template.name.lower()
    for key, vocab in VOCABS:
        path = SHARE / f"ggml-vocab-{vocab}.gguf"
        if key in name and path.exists():
            return path
    return SHARE / "ggml-vocab-llama-bpe.gguf"


SYSTEM = {"role": "system", "content": "You are a terse assistant."}
TURNS = [
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "I am a small model."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3+3?"},
]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
    {"role": "assistant", "content": "It is 18 C in Paris."},
    {"role": "user", "content": "And in Rome?"},
]
REQUESTS = {
    "chat": {"messages": [SYSTEM] + TURNS},
    "tools": {"messages": [SYSTEM] + TOOL_TURNS, "tools": TOOLS},
    # llama-server switches reasoning per request through the template
    # kwarg, ours through "reasoning"; each side ignores the other's field.
    "no_reasoning": {"messages": [SYSTEM] + TURNS, "reasoning": 0,
                     "chat_template_kwargs": {"enable_thinking": False}},
}


def post(port, path, body, timeout=30):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def llama_server_render(model, workdir):
    """The prompts llama-server renders ({kind: text or None}), its template
    caps, or (None, reason) when it does not load the model."""
    port = free_port()
    log = open(workdir / "llama-server.log", "w+")
    proc = subprocess.Popen([str(LLAMA_SERVER), "-m", str(model), "--jinja", "--host", "127.0.0.1",
                             "--port", str(port), "-c", "256", "-np", "1", "-t", "1", "--no-webui"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                lines = [l for l in log.read().splitlines() if "error" in l.lower()]
                return None, (lines[-1] if lines else f"exited {proc.returncode}")
            try:
                if get(port, "/health").get("status") == "ok":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        else:
            return None, "llama-server did not become ready in 60 s"
        caps = get(port, "/props").get("chat_template_caps", {})
        out = {}
        for kind, body in REQUESTS.items():
            status, reply = post(port, "/apply-template", body)
            out[kind] = reply.get("prompt") if status == 200 else None
        return (out, caps), None
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def our_render(model, workdir):
    files = []
    for kind, body in REQUESTS.items():
        f = workdir / f"{kind}.json"
        f.write_text(json.dumps(body))
        files.append(f)
    r = subprocess.run([CHAT_RENDER, "--model", str(model)] + [str(f) for f in files],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    if len(lines) == 1 and "error" in lines[0]:   # the template did not load
        return {kind: lines[0] for kind in REQUESTS}
    return dict(zip(REQUESTS, lines))


REPORT = {}


def first_difference(a, b):
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return f"at {i}: ours {a[max(0, i - 20):i + 40]!r} vs llama-server {b[max(0, i - 20):i + 40]!r}"


@pytest.mark.parametrize("template", TEMPLATES, ids=[t.stem for t in TEMPLATES])
def test_template_matches_llama_server(template, tmp_path):
    model = tmp_path / "model.gguf"
    subprocess.run([MKMODEL, "--out", str(model), "--vocab", str(vocab_for(template)),
                    "--chat-template", str(template), "--embd", "32", "--heads", "2",
                    "--kv-heads", "1", "--ff", "64", "--layers", "1"],
                   check=True, capture_output=True, timeout=120)
    theirs, why = llama_server_render(model, tmp_path)
    ours = our_render(model, tmp_path)
    entry = REPORT.setdefault(template.stem, {"vocab": vocab_for(template).stem})
    if theirs is None:
        entry["result"] = f"llama-server refuses the model: {why}"
        model.unlink()
        pytest.skip(entry["result"])
    prompts, caps = theirs
    failures, both_refuse = [], []
    for kind in REQUESTS:
        mine = ours[kind]
        if prompts[kind] is None:
            if "error" not in mine:
                failures.append(f"{kind}: llama-server refuses it, we render it")
            else:
                both_refuse.append(f"{kind}: {mine['error'][:160]}")
            continue
        if "error" in mine:
            failures.append(f"{kind}: we refuse it ({mine['error'][:200]}), llama-server renders it")
        elif mine["prompt"] != prompts[kind]:
            failures.append(f"{kind}: differs {first_difference(mine['prompt'], prompts[kind])}")
    if caps.get("supports_tools") and prompts["tools"] is not None and "error" not in ours["tools"]:
        if "get_weather" not in ours["tools"]["prompt"]:
            failures.append("tools: the template supports tools but the prompt does not name them")
    entry["supports_tools"] = bool(caps.get("supports_tools"))
    entry["both_refuse"] = both_refuse
    entry["result"] = "; ".join(failures) or "match"
    report = os.environ.get("IC_TEMPLATES_REPORT")
    if report:
        Path(report).write_text(json.dumps(REPORT, indent=1))
    model.unlink()
    assert not failures, "\n".join(failures)
