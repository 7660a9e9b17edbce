#!/bin/sh
# runtime-deps.sh - the distribution packages a built binary needs at run time.
#
#   deploy/docker/runtime-deps.sh FILE...
#
# Runs in the build stage of deploy/docker/Dockerfile{,.cuda}: resolves the
# shared libraries of each FILE with ldd and prints, one per line, the
# Debian/Ubuntu packages that own them, for the runtime stage to
# `apt-get install`. Deriving the list (rather than writing it down) keeps
# the image right when the server gains a dependency and works on Debian and
# Ubuntu alike, whose package names differ (libwebsockets17 vs 19t64).
# Libraries no package owns (the llama.cpp prefix, which the image copies)
# and the CUDA toolkit's (the CUDA runtime image has them; libcuda.so.1 comes
# from the host's driver) are left out. Exits non-zero if a library is
# missing.
set -eu

[ $# -gt 0 ] || { echo "usage: $0 FILE..." >&2; exit 2; }
missing=$(ldd "$@" | awk '/=> not found/ && $1 != "libcuda.so.1" {print $1}' | sort -u)
if [ -n "$missing" ]; then
    echo "runtime-deps: libraries not found: $missing" >&2
    exit 1
fi
ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
while read -r lib; do
    real=$(readlink -f "$lib")
    case "$real" in /usr/local/cuda*) continue ;; esac
    # Merged /usr: dpkg may know the file under /lib or under /usr/lib.
    owner=$(dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null ||
            dpkg -S "/usr$real" 2>/dev/null || true)
    [ -n "$owner" ] || continue
    printf '%s\n' "${owner%%:*}"
done | sort -u
