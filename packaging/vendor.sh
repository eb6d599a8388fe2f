#!/bin/sh
# Makes target/package/qubes-pci-admin-VERSION-vendor.tar.gz (outside the
# tracked tree): every crate the workspace needs (from Cargo.lock), for the
# offline RPM and Debian builds. OUT=DIR writes it elsewhere.
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=${OUT:-target/package}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo vendor --locked --versioned-dirs "$work/vendor" >/dev/null 2>"$work/vendor.log" || { cat "$work/vendor.log" >&2; exit 1; }
tar -C "$work" -czf "$out/qubes-pci-admin-$version-vendor.tar.gz" vendor
echo "$out/qubes-pci-admin-$version-vendor.tar.gz"
