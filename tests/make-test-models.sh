#!/bin/sh
# Makes the generated models the tests use, once per build directory:
#   tiny-<type>.gguf       each weight type, on the default (llama-spm) vocabulary
#   vocab-<name>.gguf      tiny f32 models on real vocabularies (some add no
#                          BOS), with the model family's real chat template
#                          where the llama.cpp install has one
# Usage: make-test-models.sh DIR [SHARE]; SHARE (or $IC_LLAMA_SHARE) is the
# llama prefix's share/inferencecenter folder with ggml-vocab-*.gguf and
# templates/. Other suites use the vocab-* names as they are: keep them.
set -eu
dir="$1"
share="${2:-${IC_LLAMA_SHARE:-}}"
mkdir -p "$dir"
for t in f32 f16 q8_0 q4_0; do
    out="$dir/tiny-$t.gguf"
    [ -f "$out" ] || "$IC_MKMODEL" --preset tiny --type "$t" --seed 42 --out "$out"
done
if [ -z "$share" ] || [ ! -d "$share" ]; then
    echo "make-test-models: no llama share folder (pass it or set IC_LLAMA_SHARE)" >&2
    exit 1
fi
# name:template (empty: the vocabulary's own template, if any)
for entry in \
    llama-spm: \
    llama-bpe:meta-llama-Llama-3.1-8B-Instruct.jinja \
    qwen2:Qwen-Qwen2.5-7B-Instruct.jinja \
    gpt-2: \
    phi-3:microsoft-Phi-3.5-mini-instruct.jinja \
    gemma-4:google-gemma-4-31B-it.jinja; do
    name="${entry%%:*}"
    tmpl="${entry#*:}"
    out="$dir/vocab-$name.gguf"
    [ -f "$out" ] && continue
    vocab="$share/ggml-vocab-$name.gguf"
    if [ -n "$tmpl" ] && [ -f "$share/templates/$tmpl" ]; then
        "$IC_MKMODEL" --preset tiny --seed 42 --vocab "$vocab" \
            --chat-template "$share/templates/$tmpl" --out "$out"
    else
        "$IC_MKMODEL" --preset tiny --seed 42 --vocab "$vocab" --out "$out"
    fi
done
