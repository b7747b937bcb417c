#!/bin/sh
# Builds the Debian packages: packaging/debian/build-debs.sh [--output DIR] [PACKAGE...]
# (default: tcpulse-collector tcpulse-agent; .debs in target/debian, or DIR).
#
# Each package ships its reference config (/usr/share/doc/<pkg>/reference.toml), which
# `<bin> config` generates from the config structs. cargo-deb cannot run a binary to
# make an asset, so this builds the release binary itself, writes
# target/release/<pkg>-reference.toml with it, then runs `cargo deb --no-build` (the
# asset is declared in [package.metadata.deb] of <pkg>/Cargo.toml). Plain `cargo deb`
# fails on the missing reference: use this script.
set -eu
cargo=${CARGO:-cargo}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
case $target in /*) ;; *) target=$root/$target ;; esac

output=""
if [ "${1:-}" = "--output" ]; then
    output=$2
    shift 2
fi
[ $# -gt 0 ] || set -- tcpulse-collector tcpulse-agent

for pkg in "$@"; do
    # The build cargo-deb would do: release profile, the features of the package's
    # [package.metadata.deb] (the collector's: none, so no `demo`).
    case $pkg in
        tcpulse-collector) features=--no-default-features ;;
        *) features= ;;
    esac
    "$cargo" build --release --locked -p "$pkg" $features
    "$target/release/$pkg" config > "$target/release/$pkg-reference.toml"
    if [ -n "$output" ]; then
        "$cargo" deb --locked --no-build -p "$pkg" --output "$output"
    else
        "$cargo" deb --locked --no-build -p "$pkg"
    fi
done
