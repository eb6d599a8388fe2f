#!/bin/sh
# Makes target/package/qubes-pci-admin-VERSION-vendor.tar.gz (outside the
# tracked tree): every crate the workspace needs on x86_64 Linux (from
# Cargo.lock; Qubes runs nowhere else), one directory per crate and version,
# for the offline RPM and Debian builds. OUT=DIR writes it elsewhere.
# Needs cargo-vendor-filterer (cargo install cargo-vendor-filterer), which
# leaves out the crates only other platforms use (Windows, wasm, ...).
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=${OUT:-target/package}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! cargo vendor-filterer --help >/dev/null 2>&1; then
    echo "packaging/vendor.sh needs cargo-vendor-filterer: cargo install cargo-vendor-filterer" >&2
    exit 1
fi
cargo vendor-filterer --platform x86_64-unknown-linux-gnu --versioned-dirs "$work/vendor" >/dev/null 2>"$work/vendor.log" \
    || { cat "$work/vendor.log" >&2; exit 1; }
tar -C "$work" -czf "$out/qubes-pci-admin-$version-vendor.tar.gz" vendor
echo "$out/qubes-pci-admin-$version-vendor.tar.gz"
