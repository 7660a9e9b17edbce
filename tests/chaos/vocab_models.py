"""vocab_models.py - the real-vocabulary test models: random weights (ic-mkmodel)
with a real tokenizer from llama.cpp's ggml-vocab-*.gguf and its real chat
template, so the tests see vocabularies without a BOS, byte-level BPE,
SentencePiece, 150k-262k tokens and real templates.

Used by tests/e2e/conftest.py (a session fixture) and tests/chaos/chaos.py.
Until tests/make-test-models.sh makes them, ensure_models() makes any that
are missing in IC_TEST_MODELS under the same names (vocab-<name>.gguf).
Standard library only (Debian's /usr/bin/python3).
"""
import os
import struct
import subprocess
from pathlib import Path

# name -> chat template file under share/inferencecenter/templates/ to embed,
# or None to keep what the vocabulary file carries (qwen2, phi-3 and gemma-4
# carry their own; llama-spm and gpt-2 have none: base models, so the
# server's plain fallback format is what they get).
VOCABS = {
    "llama-spm": None,
    "llama-bpe": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "qwen2": None,
    "gpt-2": None,
    "phi-3": None,
    "gemma-4": None,
}

# The ones whose vocabulary adds no BOS (an empty raw prompt is 0 tokens).
NO_BOS = ("qwen2", "gpt-2")


def llama_share():
    """share/inferencecenter of the pinned llama.cpp build, or None."""
    env = os.environ.get("IC_LLAMA_SHARE")
    cands = [Path(env)] if env else []
    cache = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    cands += sorted(cache.glob("inferencecenter/llama-*/share/inferencecenter"))
    for c in cands:
        if (c / "ggml-vocab-llama-spm.gguf").is_file():
            return c
    return None


def model_path(models_dir, name):
    return Path(models_dir) / f"vocab-{name}.gguf"


# ------------------------------------------------------- GGUF header edit

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}


class _Reader:
    def __init__(self, data):
        self.d = data
        self.o = 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)
        self.o += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.d[self.o:self.o + n]
        self.o += n
        return s

    def value(self, t):
        if t in _SCALAR:
            return self.take(_SCALAR[t])
        if t == 8:
            return self.string()
        if t == 9:
            et = self.take("I")
            n = self.take("Q")
            return [self.value(et) for _ in range(n)] if et in (8, 9) else \
                self._skip_array(et, n)
        raise ValueError(f"unknown GGUF value type {t}")

    def _skip_array(self, et, n):
        self.o += struct.calcsize("<" + _SCALAR[et]) * n
        return None


def _gguf_string(b):
    return struct.pack("<Q", len(b)) + b


def set_chat_template(path, template):
    """Rewrites the GGUF at path with tokenizer.chat_template = template
    (replacing one already there); tensor data is copied unchanged."""
    data = Path(path).read_bytes()
    r = _Reader(data)
    if data[:4] != b"GGUF":
        raise ValueError(f"{path} is not GGUF")
    r.o = 4
    version = r.take("I")
    n_tensors = r.take("Q")
    n_kv = r.take("Q")
    kvs = []
    alignment = 32
    for _ in range(n_kv):
        start = r.o
        key = r.string()
        t = r.take("I")
        v = r.value(t)
        if key == b"general.alignment":
            alignment = v
        kvs.append((key, data[start:r.o]))
    t_start = r.o
    for _ in range(n_tensors):
        r.string()
        nd = r.take("I")
        r.o += 8 * nd + 4 + 8
    t_end = r.o
    data_off = (t_end + alignment - 1) // alignment * alignment
    key = b"tokenizer.chat_template"
    kvs = [kv for kv in kvs if kv[0] != key]
    kvs.append((key, _gguf_string(key) + struct.pack("<I", 8) +
                _gguf_string(template.encode())))
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs))
    head += b"".join(raw for _, raw in kvs) + data[t_start:t_end]
    head += b"\0" * ((-len(head)) % alignment)
    tmp = Path(str(path) + ".tmpl.tmp")
    tmp.write_bytes(head + data[data_off:])
    os.replace(tmp, path)


# ------------------------------------------------------------ the models

def ensure_models(models_dir, mkmodel, names=None):
    """Makes the missing vocab-<name>.gguf in models_dir; returns
    {name: path} of those that exist afterwards (none without the vocab
    files or ic-mkmodel)."""
    share = llama_share()
    out = {}
    for name in names or VOCABS:
        p = model_path(models_dir, name)
        if not p.is_file() and share and mkmodel and Path(mkmodel).is_file():
            vocab = share / f"ggml-vocab-{name}.gguf"
            if vocab.is_file():
                Path(models_dir).mkdir(parents=True, exist_ok=True)
                tmp = Path(str(p) + f".{os.getpid()}.tmp")
                subprocess.run([str(mkmodel), "--vocab", str(vocab), "--type", "q8_0",
                                "--seed", "42", "--name", f"vocab-{name}", "--out", str(tmp)],
                               check=True, capture_output=True, timeout=300)
                if VOCABS.get(name):
                    tmpl = share / "templates" / VOCABS[name]
                    set_chat_template(tmp, tmpl.read_text())
                os.replace(tmp, p)
        if p.is_file():
            out[name] = str(p)
    return out
