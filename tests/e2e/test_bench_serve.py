"""bench/serve.py end to end, so that the benchmark does not rot: the real
script against the real server only (--targets ic), two chat prompts at
concurrency 1 and a 2-client x 2-turn chat, one repetition, small enough
to take seconds. Its table has every row, every request completed, and
the second turn of each chat reused the first turn's cells
(usage.prompt_tokens_details.cached_tokens). No speed is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import IC_BIN, IC_THREADS, MODEL, ROOT

SERVE = ROOT / "bench" / "serve.py"


def test_bench_serve_chat_smoke(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SERVE), "--targets", "ic", "--model", MODEL,
           "--build-dir", str(Path(IC_BIN).parent), "--endpoint", "chat",
           "--max-concurrency", "1", "--multi-turn", "2x2", "--num-prompts", "2",
           "--input-len", "8", "--output-len", "4", "--threads", IC_THREADS, "--slots", "4",
           "--timeout", "30", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (out / "serve.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| conc 1 | ic |")
            or line.startswith("| chat 2x2 | ic |")]
    assert len(rows) == 2, md
    for row in rows:
        assert row.split("|")[3].strip() in ("2/2", "4/4"), row  # done/sent: all completed
    assert "| 2 | " in md and "| 2-2 | " in md, md               # the per-turn table
    chat = json.loads((out / "chat2x2-ic-r0.json").read_text())
    assert chat["endpoint"] == "/v1/chat/completions"
    turns = {(rec["client"], rec["turn"]): rec for rec in chat["records"]}
    assert sorted(turns) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in (0, 1):
        first, second = turns[(c, 0)], turns[(c, 1)]
        assert first["ok"] and second["ok"], (first["error"], second["error"])
        assert len(first["text"]) > 0
        # turn 2 resends turn 1's prompt and answer: at least turn 1's
        # prompt comes from the cache, and its prompt is longer.
        assert second["prompt_tokens"] > first["prompt_tokens"] + first["output_tokens"]
        assert second["cached_tokens"] >= first["prompt_tokens"], second
