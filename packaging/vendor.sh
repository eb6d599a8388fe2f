#!/bin/sh
# Makes qubes-pci-admin-VERSION-vendor.tar.gz: every crate the workspace
# needs (from Cargo.lock), for the offline RPM and Debian builds.
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
rm -rf vendor
cargo vendor --locked vendor >/dev/null
tar -czf "qubes-pci-admin-$version-vendor.tar.gz" vendor
rm -rf vendor
echo "qubes-pci-admin-$version-vendor.tar.gz"
