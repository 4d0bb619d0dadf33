#!/usr/bin/env bash
# The supply-chain check: cargo-deny over the workspace's locked dependency graph, with the rules in deny.toml
# (licences, duplicate versions, sources, and RustSec advisories).
#
# Advisories need a copy of the RustSec advisory database in cargo-deny's folder ($CARGO_HOME/advisory-dbs, or
# FEDGE_ADVISORY_DB_PATH). The script asks cargo-deny to fetch or update it, then checks against the copy there and
# prints the date of its newest advisory. Where there is no copy (a machine without network, as this project's CI
# machines reach only package registries) it says loudly that advisories were NOT checked and checks the rest;
# FEDGE_REQUIRE_ADVISORIES=1 makes that a failure.
#
# Usage: scripts/supply-chain.sh          (needs cargo-deny 0.20: `cargo install cargo-deny --locked --version 0.20.2`)
set -euo pipefail
cd "$(dirname "$0")/.."

db_path="${FEDGE_ADVISORY_DB_PATH:-${CARGO_HOME:-$HOME/.cargo}/advisory-dbs}"
checks=(bans licenses sources)

# Bring the database up to date where the network allows (cargo-deny's fetch exits 0 even when it could not reach
# the host, so it proves nothing), then check against whatever copy there is, and say how new it is.
timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1 || true
if compgen -G "$db_path/advisory-db-*/crates" >/dev/null; then
  copy=$(compgen -G "$db_path/advisory-db-*" | head -n 1)
  newest=$(git -C "$copy" log -1 --format=%cs 2>/dev/null || echo unknown)
  echo "supply chain: advisories checked against $copy (newest advisory commit: $newest)"
  cargo deny --log-level error --locked --offline check "${checks[@]}" advisories
else
  echo "supply chain: WARNING: advisories NOT checked: the RustSec database could not be fetched and there is no" \
    "copy in $db_path (clone https://github.com/rustsec/advisory-db there as advisory-db-<hash>)" >&2
  [ "${FEDGE_REQUIRE_ADVISORIES:-0}" = 1 ] && exit 1
  cargo deny --log-level error --locked --offline check "${checks[@]}"
fi
echo "supply chain: cargo deny passed"
