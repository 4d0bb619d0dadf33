#!/usr/bin/env bash
# static-server: builds fedge-server as one statically linked x86_64 executable (no program interpreter, no shared
# library), the binary the container image ships. The Dockerfile's build stage runs this script, so running it here
# checks what the image build does, without a Docker engine.
#
# Usage: scripts/static-server.sh [OUT_DIR]    (default OUT_DIR: $CARGO_TARGET_DIR/static-server)
#
# The target is x86_64-unknown-linux-gnu with glibc linked statically (+crt-static), not musl: the server moves
# model-sized vectors between threads, and it relies on glibc's malloc with a fixed mmap threshold
# (fedge_shared::alloc; the RSS figures in BENCHMARKS.md are glibc's), which musl's allocator does not have. The
# server resolves no host names (it binds socket addresses), so a static glibc's missing NSS modules do not matter.
# Needs: cargo, gcc with glibc's static libc (Debian's libc6-dev), readelf (binutils).
# Prints the binary's path and size last; exits non-zero if the build fails or the binary is not static.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
out="${1:-$CARGO_TARGET_DIR/static-server}"
# Only the target's artifacts get +crt-static (--target is explicit), not build scripts and proc macros.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build --locked --release -p fedge-server --bin fedge-server --target "$target" -j "${STATIC_SERVER_JOBS:-2}"
bin="$CARGO_TARGET_DIR/$target/release/fedge-server"
if readelf -l "$bin" | grep -q "Requesting program interpreter"; then
  echo "static-server: $bin asks for a program interpreter" >&2; exit 1
fi
if readelf -d "$bin" | grep -q "(NEEDED)"; then
  echo "static-server: $bin needs shared libraries: $(readelf -d "$bin" | grep NEEDED)" >&2; exit 1
fi
# It runs with nothing around it: its own version and the probe's help.
env -i "$bin" --version
env -i "$bin" probe --help >/dev/null
mkdir -p "$out"
cp "$bin" "$out/fedge-server"
strip "$out/fedge-server"
echo "static-server: $out/fedge-server ($(stat -c %s "$out/fedge-server") bytes, static)"
