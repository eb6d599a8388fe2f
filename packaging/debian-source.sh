#!/bin/sh
# Prepares the Debian source package of the client under target/package
# (outside the tracked tree): qubes-pci_VERSION.orig.tar.gz (the tree at
# HEAD plus the vendored crates under vendor/) and qubes-pci-VERSION/ with
# debian/ in it. Then:
#   cd target/package/qubes-pci-VERSION && dpkg-buildpackage -us -uc
set -eu
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
out=target/package
vendor=$(OUT="$out" packaging/vendor.sh)
tree="$out/qubes-pci-$version"
rm -rf "$tree" "$out/qubes-pci_$version.orig.tar.gz"
mkdir -p "$tree"
git archive HEAD | tar -x -C "$tree"
tar -xzf "$vendor" -C "$tree"
tar -C "$out" -czf "$out/qubes-pci_$version.orig.tar.gz" "qubes-pci-$version"
cp -r packaging/debian "$tree/debian"
# debian/copyright for exactly the crates vendored
python3 packaging/debian-copyright.py "$tree/vendor" "$tree/debian/copyright" >/dev/null
echo "$tree"
