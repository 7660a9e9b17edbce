"""The serve command's own behaviour: which addresses count as loopback
(an open server must not listen elsewhere without saying so), and signals
that arrive while the server is being torn down."""
import signal
import subprocess
import time

import pytest

from conftest import IC_BIN, MODEL, Client, run


def serve_refusal(host):
    """Runs serve on host without --tokens; returns (exit status, stderr)."""
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--host", host, "--port", "1"],
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stderr


@pytest.mark.parametrize("host", ["127.evil.example", "127.0.0.1.nip.io", "1270.0.0.1",
                                  "0.0.0.0", "::", "::ffff:10.0.0.1"])
def test_names_that_only_look_like_loopback_need_tokens(host):
    rc, err = serve_refusal(host)
    assert rc == 2, err
    assert "refusing to listen" in err and "--tokens" in err


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
def test_loopback_addresses_serve_without_tokens(start_server, host):
    s = start_server(host=host, wait=False)
    deadline = time.monotonic() + 30
    while "ready:" not in s.log() and time.monotonic() < deadline:
        assert s.proc.poll() is None, s.log()
        time.sleep(0.05)
    assert "ready:" in s.log()
    assert "refusing" not in s.log()


def test_signals_during_teardown_reach_no_freed_object(start_server):
    """SIGTERM starts the stop; SIGHUPs that follow while the gateway and
    server are freed are ignored (under ASan a use-after-free would show)."""
    s = start_server()

    async def body():
        c = await Client.connect(s)
        sid = await c.create_session()
        await c.start_infer(sid, "Once upon a time", temperature=0, ignore_eos=True,
                            max_tokens=100000)
        await c.recv_type("TOKEN")
        s.proc.send_signal(signal.SIGTERM)
        for _ in range(400):
            if s.proc.poll() is not None:
                break
            s.proc.send_signal(signal.SIGHUP)
            time.sleep(0.002)
    run(body())
    rc = s.wait_exit()
    assert rc == 0, s.log()
    assert "AddressSanitizer" not in s.log() and "runtime error" not in s.log()
