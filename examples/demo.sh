#!/usr/bin/env bash
# A scripted session against this machine's real /sys, with the example
# system info and policy shipped in examples/ and a throw-away state dir.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/qubes-pci-admin
STATE=$(mktemp -d)
trap 'rm -rf "$STATE"' EXIT
export QUBES_PCI_ADMIN_SYSFS=${QUBES_PCI_ADMIN_SYSFS:-/sys}
export QUBES_PCI_ADMIN_SYSTEM_INFO=examples/system-info.json
export QUBES_PCI_ADMIN_POLICY_DIR=examples/policy.d
export QUBES_PCI_ADMIN_STATE_DIR=$STATE
export QUBES_PCI_ADMIN_LOG=${QUBES_PCI_ADMIN_LOG:-error}

# Runs one call and prints the raw reply with NUL bytes shown as \0.
step() {
    local why=$1 src=$2 dest=$3 method=$4 payload=${5:-}
    echo "== $why"
    echo "   \$ qubes-pci-admin call --source $src --target $dest $method${payload:+  <<< \"$payload\"}"
    local rc=0
    printf '%s' "$payload" | "$BIN" call --source "$src" --target "$dest" "$method" | sed 's/\x0/\\0/g' || rc=$?
    echo
    echo "   (exit status $rc)"
    echo
}

step "Available as dom0: every PCI device of this machine, one line each" \
    dom0 @adminvm admin.vm.device.pci.Available
step "Available as the management qube: allowed by examples/policy.d/include/admin-local-rwx" \
    mgmt @adminvm admin.vm.device.pci.Available
step "Available as the GUI domain: allowed by examples/policy.d/30-demo.policy" \
    sys-gui @adminvm admin.vm.device.pci.Available+00_00.0
step "Available as a work qube: no policy rule allows it, so PermissionDenied" \
    work @adminvm admin.vm.device.pci.Available
step "A malformed port id gets a typed error, not an empty reply" \
    dom0 @adminvm admin.vm.device.pci.Available+00_14.0-..
echo "== How the policy decides (qubes-pci-admin policy eval)"
"$BIN" policy eval mgmt work admin.vm.device.pci.Assign+dom0+00_14.0; echo "   (exit status $?)"
"$BIN" policy eval --json sys-gui personal admin.vm.device.pci.Assign+dom0+00_14.0 || echo "   (exit status $?)"
"$BIN" policy eval --json mgmt personal admin.vm.device.pci.Assign+dom0+00_14.0 || echo "   (exit status $?)"
echo
echo "== qubes-pci-admin list"
"$BIN" list
