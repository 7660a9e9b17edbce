#!/bin/sh
# Makes the generated models the tests use, once per build directory.
set -eu
dir="$1"
mkdir -p "$dir"
for t in f32 f16 q8_0 q4_0; do
    out="$dir/tiny-$t.gguf"
    [ -f "$out" ] || "$IC_MKMODEL" --preset tiny --type "$t" --seed 42 --out "$out"
done
