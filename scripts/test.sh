#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (scripts/setup.sh: pinned Python clients, the Tansu broker, kcat), then runs
# formatting and lint checks, the Rust unit and integration tests (real Tansu
# brokers), and the Python integration suite (real clients through Switchyard).
# CI runs exactly this (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# A CI run starts from a fresh clone: incremental caches are never reused and
# full debug info is only read by a debugger, yet together they are most of the
# target directory on a disk CI shares. Line tables keep panics' backtraces.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
    export CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi

step() { printf '\n==== %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "plugins: guest SDK and example plugins (own workspace, built to wasm32 components)"
(cd plugins && cargo fmt --all -- --check && cargo clippy --all-targets -- -D warnings && cargo test && ./build.sh)

step "cargo build"
cargo build --workspace --all-targets

step "cargo test (unit, bad input, fuzz: real Tansu)"
TANSU_BIN="$ROOT/.tools/bin/tansu" cargo test --workspace

step "pytest (real clients through Switchyard)"
# Brokers' logs, clusters' data and the JVMs' temporary files stay inside the
# checkout (target/pytest, emptied at each run), not in a /tmp CI shares.
SWITCHYARD_BIN="$ROOT/target/debug/switchyard" SWITCHYARD_SKIP_BUILD=1 \
    TANSU_BIN="$ROOT/.tools/bin/tansu" .venv/bin/pytest tests/ -q -p no:cacheprovider \
    --basetemp "$ROOT/target/pytest"
