#!/usr/bin/env bash
# Install Debian's OpenBLAS so that lazarus/platform.py can give MLX (CPU) a fast float32 matmul.
# Linux only; needs root with apt-get. Otherwise prints one line saying how to fix it.
set -u
[ "$(uname -s)" = "Linux" ] || exit 0
for p in /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0; do
  [ -e "$p" ] && exit 0
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q libopenblas0-pthread >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libopenblas0-pthread >/dev/null; } \
    || echo "warning: could not install libopenblas0-pthread; MLX float32 matmul will be ~50x slower" >&2
else
  echo "warning: OpenBLAS missing and not root: run 'sudo apt-get install libopenblas0-pthread' for fast MLX matmul on CPU" >&2
fi
exit 0
