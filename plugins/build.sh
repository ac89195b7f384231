#!/usr/bin/env bash
# Build every example plugin as a WebAssembly component into plugins/dist/<name>.wasm.
#
# wasm32-unknown-unknown linked by the toolchain's own wasm-component-ld (no
# WASI, no extra tools): the output is a component whose only imports are the
# switchyard:plugin interfaces. See docs/plugin-host-spike.md §2 option (c).
#
# Usage: plugins/build.sh [name ...]   (default: every plugins/examples/* and
# plugins/fixtures/* — the fixtures misbehave on purpose, for the host's tests)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
target=wasm32-unknown-unknown

if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing rust target $target"
    rustup target add "$target"
fi

B=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin
for tool in "$B/wasm-component-ld" "$B/gcc-ld/wasm-ld"; do
    [[ -x $tool ]] || { echo "missing $tool (rustc too old? needs the toolchain's wasm-component-ld)" >&2; exit 1; }
done

if [[ $# -gt 0 ]]; then
    names=("$@")
else
    names=()
    for d in examples/*/ fixtures/*/; do names+=("$(basename "$d")"); done
fi

mkdir -p dist
for name in "${names[@]}"; do
    [[ -f examples/$name/Cargo.toml || -f fixtures/$name/Cargo.toml ]] || { echo "no plugin $name" >&2; exit 1; }
    echo "== $name"
    cargo rustc --release --target "$target" -p "$name" --crate-type cdylib -- \
        -C linker="$B/wasm-component-ld" \
        -C link-arg=--wasi-adapter=none \
        -C link-arg=--wasm-ld-path="$B/gcc-ld/wasm-ld"
    out=target/$target/release/${name//-/_}.wasm
    # A component starts with "\0asm" + version 0d 00 01 00 (a core module: 01 00 00 00).
    magic=$(od -An -tx1 -N8 "$out" | tr -d ' \n')
    if [[ $magic != 0061736d0d000100 ]]; then
        echo "$out is not a component (header $magic)" >&2
        exit 1
    fi
    cp "$out" "dist/$name.wasm"
done

echo
echo "component sizes:"
for name in "${names[@]}"; do
    printf '  %-24s %8d bytes\n' "dist/$name.wasm" "$(wc -c < "dist/$name.wasm")"
done
