"""KV cache types and flash attention (serve --cache-type-k/-v,
--flash-attn): a quantised cache serves, HELLO and the plan line say which
types are in use, and combinations llama.cpp cannot run are refused with a
clear line before anything loads."""
import subprocess

import pytest

from conftest import GREEDY, IC_BIN, IC_MKMODEL, MODEL, connect, run


@pytest.fixture(scope="module")
def head32_model(tmp_path_factory):
    """The tiny preset with 32-wide heads (4/2 heads of embd 128): quantised
    KV blocks are 32 elements, so the head size must be a multiple of 32."""
    out = tmp_path_factory.mktemp("kv") / "head32.gguf"
    subprocess.run([IC_MKMODEL, "--preset", "tiny", "--embd", "128", "--heads", "4",
                    "--kv-heads", "2", "--seed", "7", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(out)


async def hello_and_story(srv):
    c = await connect(srv)
    lim = c.hello["limits"]
    sid = await c.create_session()
    res = await c.infer(sid, "Once upon a time", max_tokens=8, ignore_eos=True, **GREEDY)
    await c.close()
    return lim, res


@pytest.mark.parametrize("k,v", [("q8_0", "q8_0"), ("q4_0", "f16"), ("f16", "q4_0")])
def test_quantised_cache_serves_and_hello_says_so(start_server, head32_model, k, v):
    srv = start_server(["--cache-type-k", k, "--cache-type-v", v, "--max-sessions", 2],
                       model=head32_model)
    lim, res = run(hello_and_story(srv))
    assert res.error is None, res.error
    assert res.end["stats"]["generated_tokens"] == 8
    assert (lim["cache_type_k"], lim["cache_type_v"], lim["flash_attn"]) == (k, v, "auto")
    assert f"KV {k}/{v}," in srv.log()


def test_default_is_f16_and_flash_attn_modes_are_shown(start_server, head32_model):
    srv = start_server(["--flash-attn", "off"], model=head32_model)
    lim, res = run(hello_and_story(srv))
    assert res.error is None, res.error
    assert (lim["cache_type_k"], lim["cache_type_v"], lim["flash_attn"]) == ("f16", "f16", "off")
    assert "KV f16/f16," in srv.log()
    on = start_server(["--flash-attn", "on", "--cache-type-v", "q8_0"], model=head32_model)
    lim, res = run(hello_and_story(on))
    assert res.error is None, res.error
    assert (lim["cache_type_v"], lim["flash_attn"]) == ("q8_0", "on")


def test_q8_0_plans_less_kv_per_session(start_server, head32_model):
    """The plan line's MiB per session: q8_0 is 34/64 of f16."""
    import re

    def mib(args):
        srv = start_server(args, model=head32_model)
        m = re.search(r"KV \S+, ([0-9.]+) MiB each", srv.log())
        assert m, srv.log()
        srv.terminate()
        return float(m.group(1))

    f16 = mib(["--ctx-size", 4096])
    q8 = mib(["--ctx-size", 4096, "--cache-type-k", "q8_0", "--cache-type-v", "q8_0"])
    assert abs(q8 / f16 - 34 / 64) < 0.05, (f16, q8)  # one decimal in the line


@pytest.mark.parametrize("args,says", [
    (["--cache-type-k", "q5_1"], "invalid value 'q5_1' for --cache-type-k"),
    (["--cache-type-v", "f32"], "invalid value 'f32' for --cache-type-v"),
    (["--flash-attn", "yes"], "invalid value 'yes' for --flash-attn"),
    (["--cache-type-v", "q8_0", "--flash-attn", "off"], "needs flash attention"),
])
def test_bad_combinations_are_refused_before_loading(args, says):
    p = subprocess.run([IC_BIN, "serve", "--model", MODEL, "--port", "1", *args],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 2, p.stderr
    assert says in p.stderr
    assert "loading model" not in p.stderr


def test_head_size_not_a_multiple_of_32_is_a_clear_load_error(start_server):
    """The default test models have 16- or 8-wide heads: q8_0 cannot hold them."""
    srv = start_server(["--cache-type-k", "q8_0"], wait=False)
    srv.expect_exit = None
    srv.wait_exit(30)
    assert srv.proc.returncode != 0
    assert "head size is not a multiple of 32" in srv.log()
