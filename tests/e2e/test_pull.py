"""`inferencecenter pull` and `list` against a local HF-like file server
(tests/e2e/hfserver.py on 127.0.0.1): full download, resume after a kill,
checksums, 404, 401 and HF_TOKEN, a file that is not a GGUF, a stalled
server. Never the internet."""
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IC_BIN, IC_TEST_MODELS
from hfserver import HFServer

MODEL_BYTES = (IC_TEST_MODELS / "tiny-q4_0.gguf").read_bytes() \
    if (IC_TEST_MODELS / "tiny-q4_0.gguf").exists() else None


@pytest.fixture
def hf():
    s = HFServer()
    yield s
    s.close()


def pull(hf, models, *args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    e.update({"IC_HF_ENDPOINT": hf.endpoint, **(env or {})})
    return subprocess.run([IC_BIN, "pull", *args, "--models-dir", str(models)],
                          capture_output=True, text=True, timeout=timeout, env=e)


def files_in(d):
    return sorted(p.name for p in Path(d).iterdir()) if Path(d).exists() else []


def test_full_download_is_verified_and_listed(hf, tmp_path):
    sha = hf.add("acme/tiny/tiny-q4_0.gguf", MODEL_BYTES)
    models = tmp_path / "new" / "models"            # created when missing
    p = pull(hf, models, "hf:acme/tiny/tiny-q4_0.gguf")
    assert p.returncode == 0, p.stderr
    assert "(verified)" in p.stdout and sha in p.stdout
    assert files_in(models) == ["tiny-q4_0.gguf"]
    assert hashlib.sha256((models / "tiny-q4_0.gguf").read_bytes()).hexdigest() == sha
    assert hf.log[0][1] == "/acme/tiny/resolve/main/tiny-q4_0.gguf" and hf.log[0][3] == 302
    lst = subprocess.run([IC_BIN, "list", "--models-dir", str(models)], capture_output=True,
                         text=True, timeout=30)
    assert lst.returncode == 0, lst.stderr
    row = [line for line in lst.stdout.splitlines() if line.startswith("tiny-q4_0")]
    assert row and "q4_0" in row[0] and "llama" in row[0], lst.stdout
    again = pull(hf, models, "hf:acme/tiny/tiny-q4_0.gguf")
    assert again.returncode == 0 and "already there" in again.stderr


def test_a_killed_download_resumes_with_range(hf, tmp_path):
    sha = hf.add("acme/tiny/slow.gguf", MODEL_BYTES, rate=400_000)   # ~10 s in full
    models = tmp_path / "m"
    e = {**os.environ, "IC_HF_ENDPOINT": hf.endpoint}
    proc = subprocess.Popen([IC_BIN, "pull", "hf:acme/tiny/slow.gguf", "--models-dir",
                             str(models)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
    part = models / "slow.gguf.part"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < 800_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    have = part.stat().st_size
    assert 0 < have < len(MODEL_BYTES)
    assert files_in(models) == ["slow.gguf.part"]      # a part never looks like a model
    hf.files["acme/tiny/slow.gguf"]["rate"] = None
    n_log = len(hf.log)
    p = pull(hf, models, "hf:acme/tiny/slow.gguf")
    assert p.returncode == 0, p.stderr
    assert "resumed" in p.stderr
    # (the killed transfer's own entry may land late: its handler notices the
    # dead socket only at its next write)
    ranged = [r for r in hf.log[n_log:] if r[1].startswith("/lfs/") and r[2]]
    assert ranged and ranged[-1][2] == f"bytes={have}-" and ranged[-1][3] == 206
    assert ranged[-1][4] == len(MODEL_BYTES) - have    # fewer bytes than the whole file
    assert files_in(models) == ["slow.gguf"]
    assert hashlib.sha256((models / "slow.gguf").read_bytes()).hexdigest() == sha


def test_checksum_mismatch_leaves_nothing(hf, tmp_path):
    hf.add("acme/tiny/a.gguf", MODEL_BYTES)
    p = pull(hf, tmp_path, "hf:acme/tiny/a.gguf", "--sha256", "0" * 64)
    assert p.returncode == 1 and "checksum mismatch" in p.stderr and "--sha256" in p.stderr
    assert files_in(tmp_path) == []
    hf.add("acme/tiny/b.gguf", MODEL_BYTES, published_sha="ab" * 32)
    p = pull(hf, tmp_path, "hf:acme/tiny/b.gguf")
    assert p.returncode == 1 and "published by the server" in p.stderr
    assert files_in(tmp_path) == []


def test_not_found_and_bad_sources(hf, tmp_path):
    p = pull(hf, tmp_path, "hf:acme/tiny/nope.gguf")
    assert p.returncode == 1 and "not found (HTTP 404)" in p.stderr
    assert files_in(tmp_path) == []
    for bad in ["ftp://x/y.gguf", "hf:acme/tiny", "hf:/tiny/x.gguf", "model.gguf"]:
        p = pull(hf, tmp_path, bad)
        assert p.returncode == 2, (bad, p.stderr)
    p = pull(hf, tmp_path, "hf:acme/tiny/x.gguf", "--sha256", "xyz")
    assert p.returncode == 2 and "64 hex digits" in p.stderr


def test_gated_file_needs_hf_token(hf, tmp_path):
    hf.add("acme/gated/g.gguf", MODEL_BYTES, gated=True)
    p = pull(hf, tmp_path, "hf:acme/gated/g.gguf")
    assert p.returncode == 1 and "HTTP 401" in p.stderr and "HF_TOKEN" in p.stderr
    assert files_in(tmp_path) == []
    p = pull(hf, tmp_path, "hf:acme/gated/g.gguf", env={"HF_TOKEN": "wrong"})
    assert p.returncode == 1 and "is HF_TOKEN valid" in p.stderr
    p = pull(hf, tmp_path, "hf:acme/gated/g.gguf", env={"HF_TOKEN": "good-token"})
    assert p.returncode == 0, p.stderr
    assert files_in(tmp_path) == ["g.gguf"]


def test_a_file_that_is_not_a_gguf_is_refused(hf, tmp_path):
    hf.add("acme/tiny/fake.gguf", b"<html>not a model</html>" * 1000)
    p = pull(hf, tmp_path, "hf:acme/tiny/fake.gguf")
    assert p.returncode == 1 and "not a GGUF model" in p.stderr
    assert files_in(tmp_path) == []


def test_a_stalled_server_times_out_and_the_part_resumes(hf, tmp_path):
    sha = hf.add("acme/tiny/stall.gguf", MODEL_BYTES, stall_after=1_000_000)
    t0 = time.monotonic()
    p = pull(hf, tmp_path, "hf:acme/tiny/stall.gguf", "--timeout", "2")
    assert p.returncode == 1, p.stderr
    assert time.monotonic() - t0 < 30
    assert "stopped sending" in p.stderr and "resume" in p.stderr
    assert files_in(tmp_path) == ["stall.gguf.part"]
    hf.files["acme/tiny/stall.gguf"]["stall_after"] = None
    p = pull(hf, tmp_path, "hf:acme/tiny/stall.gguf")
    assert p.returncode == 0, p.stderr
    assert hashlib.sha256((tmp_path / "stall.gguf").read_bytes()).hexdigest() == sha


def test_plain_url_without_published_checksum(tmp_path):
    """A server that publishes no checksum: the file is kept, and pull says
    it could not verify it (unless --sha256 is given)."""
    import http.server
    import threading
    data = MODEL_BYTES

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/files/plain.gguf?download=1"
        p = subprocess.run([IC_BIN, "pull", url, "--models-dir", str(tmp_path), "-q"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "not verified" in p.stdout
        sha = hashlib.sha256(data).hexdigest()
        p = subprocess.run([IC_BIN, "pull", url, "--models-dir", str(tmp_path / "b"),
                            "--sha256", sha.upper(), "--name", "renamed"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0 and "(verified)" in p.stdout, p.stderr
        assert files_in(tmp_path / "b") == ["renamed.gguf"]
    finally:
        srv.shutdown()
        srv.server_close()
