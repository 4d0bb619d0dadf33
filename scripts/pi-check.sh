#!/usr/bin/env bash
# pi-check: builds fedge-agent for a Raspberry Pi and checks, under qemu-user emulation, that the ARM build does
# real work and takes part in a federation with native peers.
#
# Usage: scripts/pi-check.sh aarch64|armv7
#   aarch64: 64-bit Raspberry Pi OS (Pi 3, 4, 5, Zero 2 W), target aarch64-unknown-linux-musl, Debian arch arm64
#   armv7:   32-bit Raspberry Pi OS (Pi 2 and later),         target armv7-unknown-linux-gnueabihf with glibc linked
#            statically (+crt-static), Debian arch armhf. (rustup's mirror here has no rust-std for the 32-bit ARM
#            musl targets; statically linked glibc gives the same property: no interpreter, no shared library.)
#
# What it does, in order (it stops at the first failure and exits non-zero):
#  1. installs what it needs: the cross gcc and binutils, qemu-user, lintian (apt-get, with sudo if not root);
#     the target's Rust standard library through `rustup target add` (bounded by a time-out); when rustup cannot
#     download it, it falls back to Debian's rustc-web with libstd-rust-web-dev:<arch> and the glibc target linked
#     statically (see "Fallback" below); cargo-deb at a pinned version (`cargo install --locked`).
#  2. cross-builds fedge-agent in release mode (ring's and tract-linalg's C and assembly with the cross gcc,
#     linked by the cross gcc against Rust's bundled musl, or statically against Debian 12's cross glibc) and checks
#     the binary is fully static: no program interpreter, no NEEDED libraries, so it runs on every Raspberry Pi OS
#     release (Buster, Bullseye, Bookworm) whatever its glibc. A statically linked glibc resolves host names through
#     /etc/hosts and DNS (built into libc since glibc 2.34) but loads no NSS module (no mDNS .local names).
#  3. under qemu-user: `self-test` (ChaCha20 against RFC 8439, the CPU's mask kernel and convolution kernel, NEON on
#     aarch64, against the portable ones), `make-model 2nn` (byte-identical to the native build's), one epoch of training on a
#     2,000-example MNIST subset, `eval` on 2,000 test images; the test accuracy must be within 0.5 points of the
#     native (dev-profile) build's on the same seed and data. Peak RSS of the emulated training is recorded
#     (qemu's own memory included: an emulation figure, not a device figure).
#  4. a mixed-architecture federation on loopback: a native fedge-server, two native agents and the emulated
#     agent, mutual TLS over QUIC, secure aggregation on, a cohort of all three agents (so no round can complete
#     without the emulated agent's masked delta), two rounds; the server's history must show both rounds
#     completed with 3 participants, the emulated agent's log must show its upload in both, and the global model's
#     test accuracy must be above 50% (ARM and x86 masks that failed to cancel would leave noise).
#  5. the Debian package (cargo-deb, metadata in edge-agent/Cargo.toml, maintainer scripts in packaging/debian/):
#     its contents, conffiles and maintainer scripts (dpkg-deb --contents / --info), lintian, and
#     `systemd-analyze verify` of the unit it ships.
# Its last line on stdout is one JSON object:
#   {"target": ..., "rounds": 2, "emulated_agent_rounds": 2, "test_accuracy": ..., ...}
# where test_accuracy is the emulated build's `eval` after one epoch; federated_test_accuracy is the global
# model's after the two rounds (the server's evaluation on the same 2,000 test images).
#
# Environment: CARGO_TARGET_DIR (default target/), PI_CHECK_OUT (work directory, default a temporary one, removed
# on success), PI_CHECK_JOBS (cargo -j for the cross build, default 2), PI_CHECK_RUSTUP_TIMEOUT (seconds, 300).
# Emulation is for correctness only: qemu runs tract 25-470x slower than a device, so no speed figure from here
# means anything about a Pi.
#
# Fallback (only when `rustup target add` fails within its time-out): Debian 12's rustc-web (1.96) with
# libstd-rust-web-dev:<arch> builds the glibc target (aarch64-unknown-linux-gnu / armv7-unknown-linux-gnueabihf)
# against Debian 12's cross libc, linked statically (+crt-static), and the same static checks apply.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

arch="${1:-}"
case "$arch" in
  aarch64)
    target=aarch64-unknown-linux-musl; gnu_target=aarch64-unknown-linux-gnu; cross=aarch64-linux-gnu
    qemu=qemu-aarch64; deb_arch=arm64; elf_machine=AArch64 ;;
  armv7)
    target=armv7-unknown-linux-gnueabihf; gnu_target=armv7-unknown-linux-gnueabihf; cross=arm-linux-gnueabihf
    qemu=qemu-arm; deb_arch=armhf; elf_machine=ARM ;;
  *) echo "usage: $0 aarch64|armv7" >&2; exit 2 ;;
esac

CARGO_DEB_VERSION=3.8.0
jobs="${PI_CHECK_JOBS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TERM_COLOR=never NO_COLOR=1
mkdir -p "$CARGO_TARGET_DIR"
export CARGO_TARGET_DIR="$(cd "$CARGO_TARGET_DIR" && pwd)"
if [ -n "${PI_CHECK_OUT:-}" ]; then
  out="$PI_CHECK_OUT"; mkdir -p "$out"; keep_out=1
else
  out=$(mktemp -d /tmp/pi-check.XXXXXX); keep_out=0
fi
out="$(cd "$out" && pwd)"

log() { echo "pi-check[$arch]: $*" >&2; }
fail() { echo "pi-check[$arch]: FAILED: $*" >&2; exit 1; }

# Processes this script started; stopped by pid on exit.
pids=()
cleanup() {
  local status=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$status" -eq 0 ] && [ "$keep_out" -eq 0 ]; then rm -rf "$out"; fi
  if [ "$status" -ne 0 ]; then echo "pi-check[$arch]: logs and files kept in $out" >&2; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------------------
# 1. Tools.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }
apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "${missing[@]}" >"$out/apt.log" 2>&1; then
    as_root apt-get update >>"$out/apt.log" 2>&1 || true
    as_root apt-get install -y --no-install-recommends "${missing[@]}" >>"$out/apt.log" 2>&1 \
      || fail "apt-get install ${missing[*]} (see $out/apt.log)"
  fi
}
apt_install "gcc-$cross" "libc6-dev-${deb_arch}-cross" "binutils-$cross" qemu-user file binutils lintian time \
  systemd

case "$target" in *musl*) mode=musl ;; *) mode=glibc ;; esac
if ! timeout "${PI_CHECK_RUSTUP_TIMEOUT:-300}" rustup target add "$target" >"$out/rustup.log" 2>&1; then
  log "rustup could not add $target within its time-out; falling back to Debian's rustc-web and the glibc target"
  mode=glibc
  as_root dpkg --add-architecture "$deb_arch"
  as_root apt-get update >>"$out/apt.log" 2>&1 || true
  apt_install rustc-web cargo-web "libstd-rust-web-dev:$deb_arch"
  target=$gnu_target
  export RUSTC=/usr/bin/rustc
fi
tu=$(echo "$target" | tr 'a-z-' 'A-Z_'); tl=$(echo "$target" | tr '-' '_')
export "CC_$tl=$cross-gcc" "AR_$tl=$cross-ar" "CARGO_TARGET_${tu}_LINKER=$cross-gcc"
# glibc targets: link glibc statically (musl targets are static by default).
[ "$mode" = glibc ] && export "CARGO_TARGET_${tu}_RUSTFLAGS=-C target-feature=+crt-static"

if [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" != "$CARGO_DEB_VERSION" ]; then
  log "cargo install cargo-deb $CARGO_DEB_VERSION"
  nice cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" -j "$jobs" >"$out/cargo-deb-install.log" 2>&1 \
    || fail "cargo install cargo-deb (see $out/cargo-deb-install.log)"
fi

# ---------------------------------------------------------------------------------------------------------------
# 2. The cross build (release) and the native binaries (dev profile; .ci/run has built them for the tests).
log "native binaries (dev profile)"
nice cargo build --locked --workspace --bins -j "$jobs" >"$out/native-build.log" 2>&1 || fail "native build (see $out/native-build.log)"
native="$CARGO_TARGET_DIR/debug"

log "cross build for $target (release, -j $jobs)"
build_started=$(date +%s)
nice cargo build --locked --release -p fedge-agent --bin fedge-agent --target "$target" -j "$jobs" \
  >"$out/cross-build.log" 2>&1 || { tail -30 "$out/cross-build.log" >&2; fail "cross build"; }
build_seconds=$(( $(date +%s) - build_started ))
bin="$CARGO_TARGET_DIR/$target/release/fedge-agent"
binary_bytes=$(stat -c %s "$bin")
cp "$bin" "$out/fedge-agent.$arch"
"$cross-strip" -o "$out/fedge-agent.$arch.stripped" "$bin"
stripped_bytes=$(stat -c %s "$out/fedge-agent.$arch.stripped")
log "built in ${build_seconds}s: $binary_bytes bytes ($stripped_bytes stripped)"

# Linkage: the binary must run on the Raspberry Pi OS people have.
readelf -h "$bin" | grep -q "Machine:.*$elf_machine" || fail "$bin is not an $elf_machine ELF"
file_says=$(file -b "$bin")
readelf -l "$bin" | grep -q "Requesting program interpreter" && fail "$bin asks for a program interpreter"
readelf -d "$bin" | grep -q "(NEEDED)" && fail "$bin needs shared libraries: $(readelf -d "$bin" | grep NEEDED)"
echo "$file_says" | grep -Eq "static(-pie)? linked|statically linked" || fail "file(1) does not call $bin static: $file_says"
linkage="static-$mode"
log "linkage: $linkage ($file_says)"

# ---------------------------------------------------------------------------------------------------------------
# 3. Real work under emulation: make-model, one epoch on 2,000 MNIST examples, eval; against the native build.
# IDX subsets (uncompressed) of the bundled MNIST: examples [from, from+n) of a split.
be32() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(( ($1 >> 24) & 255 )) $(( ($1 >> 16) & 255 )) $(( ($1 >> 8) & 255 )) $(( $1 & 255 )))"; }
idx_subset() { # split from n dir
  local split=$1 from=$2 n=$3 dir=$4
  mkdir -p "$dir"
  { printf '\x00\x00\x08\x03'; be32 "$n"; be32 28; be32 28
    # head stops reading early: the writers' SIGPIPE is expected (the sizes are checked below).
    (set +o pipefail; gzip -dc "$root/data/mnist/$split-images-idx3-ubyte.gz" | tail -c +$(( 17 + from * 784 )) | head -c $(( n * 784 )))
  } > "$dir/$split-images-idx3-ubyte"
  { printf '\x00\x00\x08\x01'; be32 "$n"
    (set +o pipefail; gzip -dc "$root/data/mnist/$split-labels-idx1-ubyte.gz" | tail -c +$(( 9 + from )) | head -c "$n")
  } > "$dir/$split-labels-idx1-ubyte"
  [ "$(stat -c %s "$dir/$split-images-idx3-ubyte")" -eq $(( 16 + n * 784 )) ] || fail "short MNIST subset"
  [ "$(stat -c %s "$dir/$split-labels-idx1-ubyte")" -eq $(( 8 + n )) ] || fail "short MNIST label subset"
}
idx_subset train 0 2000 "$out/mnist"
idx_subset t10k 0 2000 "$out/mnist"

emu() { "$qemu" "$out/fedge-agent.$arch" "$@"; }
train_args=(--data "$out/mnist" --epochs 1 --batch-size 32 --lr 0.05 --momentum 0.5 --seed 7 --json)

log "self-test of the secure-aggregation mask and convolution kernels under $qemu"
emu self-test >"$out/emulated-self-test.log" 2>&1 || fail "emulated self-test: $(cat "$out/emulated-self-test.log")"
log "$(cat "$out/emulated-self-test.log")"
if [ "$arch" = aarch64 ]; then
  grep -q "the NEON convolution kernel matches" "$out/emulated-self-test.log" \
    || fail "the aarch64 build does not run the NEON convolution kernel: $(cat "$out/emulated-self-test.log")"
fi
log "make-model 2nn (emulated and native)"
emu make-model 2nn --seed 5 --out "$out/model-emulated.onnx" >/dev/null 2>"$out/emulated-make-model.log" \
  || fail "emulated make-model (see $out/emulated-make-model.log)"
"$native/fedge-agent" make-model 2nn --seed 5 --out "$out/model.onnx" >/dev/null 2>&1 || fail "native make-model"
cmp -s "$out/model.onnx" "$out/model-emulated.onnx" || fail "the emulated make-model wrote a different model"

log "one epoch of training on 2,000 examples under $qemu"
emu_started=$(date +%s)
/usr/bin/time -f "%M" -o "$out/emulated-train.rss" "$qemu" "$out/fedge-agent.$arch" train --model "$out/model.onnx" \
  --out "$out/weights-emulated.f32" "${train_args[@]}" >"$out/emulated-train.json" 2>"$out/emulated-train.log" \
  || fail "emulated training (see $out/emulated-train.log)"
emulated_train_seconds=$(( $(date +%s) - emu_started ))
peak_rss_kib=$(tail -1 "$out/emulated-train.rss")
"$native/fedge-agent" train --model "$out/model.onnx" --out "$out/weights-native.f32" "${train_args[@]}" \
  >"$out/native-train.json" 2>"$out/native-train.log" || fail "native training (see $out/native-train.log)"

emu eval --model "$out/model.onnx" --weights "$out/weights-emulated.f32" --data "$out/mnist" --json \
  >"$out/emulated-eval.json" 2>"$out/emulated-eval.log" || fail "emulated eval (see $out/emulated-eval.log)"
"$native/fedge-agent" eval --model "$out/model.onnx" --weights "$out/weights-native.f32" --data "$out/mnist" --json \
  >"$out/native-eval.json" 2>"$out/native-eval.log" || fail "native eval"
acc() { grep -o '"accuracy":[0-9.eE+-]*' "$1" | tail -1 | cut -d: -f2; }
emulated_accuracy=$(acc "$out/emulated-eval.json"); native_accuracy=$(acc "$out/native-eval.json")
[ -n "$emulated_accuracy" ] && [ -n "$native_accuracy" ] || fail "no accuracy in the eval output"
log "test accuracy: emulated $emulated_accuracy, native $native_accuracy (training ${emulated_train_seconds}s emulated, peak RSS ${peak_rss_kib} KiB)"
awk -v a="$emulated_accuracy" -v b="$native_accuracy" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.005 && a > 0.5) }' \
  || fail "emulated accuracy $emulated_accuracy is not within 0.5 points of the native $native_accuracy"

# ---------------------------------------------------------------------------------------------------------------
# 4. A mixed-architecture federation: native server, two native agents, one emulated agent; two rounds.
log "mixed federation: native fedge-server, 2 native agents, 1 agent under $qemu"
fed="$out/federation"; mkdir -p "$fed"
ctl="$native/fedgectl"
"$ctl" init --dir "$fed/pki" --name localhost,127.0.0.1 >"$fed/init.log" 2>&1 || fail "fedgectl init"
"$ctl" operator add ci --dir "$fed/pki" >>"$fed/init.log" 2>&1 || fail "fedgectl operator add"
agents=(native-1 native-2 "pi-$arch")
for a in "${agents[@]}"; do "$ctl" agent add "$a" --dir "$fed/pki" >>"$fed/init.log" 2>&1 || fail "fedgectl agent add $a"; done
port=""
for _ in $(seq 50); do
  p=$(( 20000 + RANDOM % 40000 ))
  if ! ss -Huln "sport = :$p" | grep -q .; then port=$p; break; fi
done
[ -n "$port" ] || fail "no free UDP port"
cat > "$fed/server.toml" <<EOF
listen = "127.0.0.1:$port"
data_dir = "$fed/db"
rounds = 2
autostart = true
idle_timeout_ms = 120000

[tls]
ca = "$fed/pki/ca.pem"
cert = "$fed/pki/server.pem"
key = "$fed/pki/server.key"

[model]
onnx = "$out/model.onnx"

[evaluation]
test_data = "$out/mnist"
limit = 2000

[secagg]
enabled = true
phase_timeout_ms = 900000

[coordinator]
# Every agent in every round: no round completes without the emulated agent's masked delta.
min_agents = 3
max_agents = 3
fraction = 1.0
overselect = 1.0
seed = 1
# Emulation is slow: a long deadline, so the emulated agent is never dropped for lateness.
round_timeout_ms = 1800000
retry_backoff_ms = 1000

[coordinator.hyper]
epochs = 1
batch_size = 32
learning_rate = 0.05
momentum = 0.5
optimizer = "sgd"
seed = 3
EOF
i=0
for a in "${agents[@]}"; do
  # Disjoint 1,000-example slices of the training set, one per agent.
  idx_subset train $(( i * 1000 )) 1000 "$fed/$a/data"
  cat > "$fed/$a/agent.toml" <<EOF
bundle = "$fed/pki/agents/$a"
state_dir = "$fed/$a/state"
seed = $i
idle_timeout_ms = 120000
backoff_initial_ms = 500
backoff_max_ms = 5000

[server]
address = "127.0.0.1:$port"
name = "localhost"

[data]
mnist_dir = "$fed/$a/data"
limit = 0
holdout = 0.1

[inference]
enabled = false
EOF
  i=$((i + 1))
done

RUST_LOG=info "$native/fedge-server" --config "$fed/server.toml" >/dev/null 2>"$fed/server.log" &
pids+=($!)
for a in native-1 native-2; do
  RUST_LOG=info "$native/fedge-agent" run --config "$fed/$a/agent.toml" >/dev/null 2>"$fed/$a.log" &
  pids+=($!)
done
RUST_LOG=info "$qemu" "$out/fedge-agent.$arch" run --config "$fed/pi-$arch/agent.toml" >/dev/null 2>"$fed/pi-$arch.log" &
pids+=($!)

export FEDGE_SERVER="127.0.0.1:$port" FEDGE_SERVER_NAME=localhost FEDGE_BUNDLE="$fed/pki/operators/ci"
deadline=$(( $(date +%s) + ${PI_CHECK_FEDERATION_TIMEOUT:-2400} ))
# Rounds in the server's history that completed with all 3 selected agents reporting (so the emulated agent's
# masked delta is in each aggregate), and the newest round's global test accuracy.
summary() {
  python3 - "$1" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except Exception:
    rows = []
full = [r for r in rows if r.get("completed") and r.get("participants") == 3 and r.get("selected") == 3]
aborted = [r for r in rows if not r.get("completed") and r.get("abort_reason")]
last = max(rows, key=lambda r: r["round"])["test_accuracy"] if rows else None
print(len(full), len(aborted), "null" if last is None else last)
PY
}
while :; do
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "a federation process (pid $p) exited early (logs in $fed)"; done
  "$ctl" history --json >"$fed/history.json" 2>/dev/null || echo '[]' >"$fed/history.json"
  read -r rounds aborted federated_accuracy < <(summary "$fed/history.json")
  [ "$aborted" -eq 0 ] || fail "a round aborted: $(cat "$fed/history.json")"
  [ "$rounds" -ge 2 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "two rounds did not complete in time (logs in $fed)"
  sleep 3
done
[ "$rounds" -eq 2 ] || fail "the history does not show 2 completed rounds of all 3 agents: $(cat "$fed/history.json")"
# The emulated agent's own log: the rounds it uploaded its (masked) update in (colour codes stripped).
emulated_rounds=$(sed 's/\x1b\[[0-9;]*m//g' "$fed/pi-$arch.log" | grep -E "uploaded the masked update|uploaded update" \
  | grep -o 'round=[0-9]*' | sort -u | wc -l || true)
[ "$emulated_rounds" -eq 2 ] || fail "the emulated agent uploaded in $emulated_rounds rounds, not 2 (see $fed/pi-$arch.log)"
# The emulated agent masks with the portable ChaCha20 kernel and the native server unmasks with the x86 SIMD one:
# if they disagreed on a single coordinate, the masks would not cancel and the global model would be noise.
awk -v a="$federated_accuracy" 'BEGIN { exit !(a > 0.5) }' \
  || fail "global test accuracy $federated_accuracy after 2 rounds: the emulated agent's masks did not cancel"
log "2 rounds completed with the emulated agent in both; global test accuracy $federated_accuracy"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()

# ---------------------------------------------------------------------------------------------------------------
# 5. The Debian package.
log "Debian package ($deb_arch)"
cargo deb -p fedge-agent --target "$target" --no-build --locked --strip --output "$out/deb/" >"$out/cargo-deb.log" 2>&1 \
  || fail "cargo deb (see $out/cargo-deb.log)"
deb=$(ls "$out"/deb/*.deb | head -1)
deb_bytes=$(stat -c %s "$deb")
dpkg-deb --info "$deb" >"$out/deb-info.txt"
dpkg-deb --contents "$deb" >"$out/deb-contents.txt"
grep -q "Architecture: $deb_arch" "$out/deb-info.txt" || fail "the package is not for $deb_arch: $(grep Architecture "$out/deb-info.txt")"
for f in ./usr/bin/fedge-agent ./lib/systemd/system/fedge-agent.service ./etc/fedge/agent.toml \
         ./usr/lib/sysusers.d/fedge-agent.conf ./usr/lib/tmpfiles.d/fedge-agent.conf; do
  grep -q " $f\$" "$out/deb-contents.txt" || fail "$f is not in the package"
done
grep -Eq "^-rwxr-xr-x (root/root|0/0) .* ./usr/bin/fedge-agent$" "$out/deb-contents.txt" \
  || fail "/usr/bin/fedge-agent is not root-owned 0755"
mkdir -p "$out/deb-control"; dpkg-deb --control "$deb" "$out/deb-control"
grep -qx "/etc/fedge/agent.toml" "$out/deb-control/conffiles" || fail "/etc/fedge/agent.toml is not a conffile"
for s in postinst prerm postrm; do
  [ -x "$out/deb-control/$s" ] || fail "the package has no executable $s"
  sh -n "$out/deb-control/$s" || fail "$s is not valid sh"
done
grep -q "fedge" "$out/deb-control/postinst" || fail "postinst does not create the fedge user"
mkdir -p "$out/deb-root"; dpkg-deb -x "$deb" "$out/deb-root"
packaged=$(file -b "$out/deb-root/usr/bin/fedge-agent")
echo "$packaged" | grep -q "$elf_machine\|aarch64" || fail "the packaged binary is not for $target: $packaged"
echo "$packaged" | grep -q ", stripped" || fail "the packaged binary is not stripped: $packaged"
"$qemu" "$out/deb-root/usr/bin/fedge-agent" --version >/dev/null || fail "the packaged binary does not run"
# The unit as packaged; ExecStart points at the native build of the same program, since systemd-analyze checks
# that it can execute it.
sed "s|^ExecStart=/usr/bin/fedge-agent|ExecStart=$native/fedge-agent|" "$out/deb-root/lib/systemd/system/fedge-agent.service" \
  > "$out/fedge-agent.service"
systemd-analyze verify "$out/fedge-agent.service" >"$out/systemd-verify.log" 2>&1 \
  || { cat "$out/systemd-verify.log" >&2; fail "systemd-analyze verify"; }
[ -s "$out/systemd-verify.log" ] && { cat "$out/systemd-verify.log" >&2; fail "systemd-analyze verify printed warnings"; }
# lintian: statically linked by design; no Debian changelog (not a Debian-archive package).
lintian --tag-display-limit 0 --suppress-tags-from-file "$root/packaging/lintian-suppressed-tags" "$deb" \
  >"$out/lintian.txt" 2>&1 || true
grep -q "^E: " "$out/lintian.txt" && { cat "$out/lintian.txt" >&2; fail "lintian reports errors"; }
lintian_warnings=$(grep -c "^W: " "$out/lintian.txt" || true)
log "package $(basename "$deb"): $deb_bytes bytes, lintian: no errors, $lintian_warnings warnings"

printf '{"target":"%s","rounds":%d,"emulated_agent_rounds":%d,"test_accuracy":%s,"native_test_accuracy":%s,"federated_test_accuracy":%s,"linkage":"%s","build_seconds":%d,"binary_bytes":%d,"stripped_bytes":%d,"emulated_train_seconds":%d,"emulated_train_peak_rss_kib":%d,"deb":"%s","deb_bytes":%d}\n' \
  "$target" "$rounds" "$emulated_rounds" "$emulated_accuracy" "$native_accuracy" "$federated_accuracy" "$linkage" \
  "$build_seconds" "$binary_bytes" "$stripped_bytes" "$emulated_train_seconds" "$peak_rss_kib" "$(basename "$deb")" "$deb_bytes"
