#!/usr/bin/env bash
# A scripted session against this machine's real /sys, with the example
# system info and policy shipped in examples/ and a throw-away state dir.
# Nothing is written to /sys: starts are run with --no-bind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/qubes-pci-admin
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cp examples/system-info.json "$TMP/system-info.json"
export QUBES_PCI_ADMIN_SYSFS=${QUBES_PCI_ADMIN_SYSFS:-/sys}
export QUBES_PCI_ADMIN_SYSTEM_INFO=$TMP/system-info.json
export QUBES_PCI_ADMIN_POLICY_DIR=examples/policy.d
export QUBES_PCI_ADMIN_STATE_DIR=$TMP/state
export QUBES_PCI_ADMIN_LOG=${QUBES_PCI_ADMIN_LOG:-error}

# Runs one call and prints the raw reply with NUL bytes shown as \0
# (long listings cut to their first lines).
step() {
    local why=$1 src=$2 dest=$3 method=$4 payload=${5:-}
    echo "== $why"
    echo "   \$ qubes-pci-admin call --source $src --target $dest $method${payload:+  <<< \"$payload\"}"
    local rc=0 out
    out=$(printf '%s' "$payload" | "$BIN" call --source "$src" --target "$dest" "$method" | sed 's/\x0/\\0/g') || rc=$?
    local n
    n=$(printf '%s\n' "$out" | wc -l)
    if [ "$n" -gt 4 ]; then
        printf '%s\n' "$out" | head -n 3
        echo "   ... ($((n - 3)) more lines)"
    else
        printf '%s\n' "$out"
    fi
    echo "   (exit status $rc)"
    echo
}

# Pick a device of this machine that may be assigned: the first that is not
# a host or PCI bridge. Its qrexec argument form is dom0+PORT+DEVICE_ID with
# ':' written as '+'.
LINE=$("$BIN" call --source dom0 --target @adminvm admin.vm.device.pci.Available \
    | tr '\0' '\n' | grep -v "interfaces='p060[04]" | grep "port_id=" | head -n 1 || true)
if [ -z "$LINE" ]; then
    echo "this machine shows no assignable PCI device under $QUBES_PCI_ADMIN_SYSFS; nothing to demonstrate" >&2
    exit 0
fi
HEAD=${LINE%% *}
PORT=${HEAD%%:*}
DEV="dom0+$(printf '%s' "$HEAD" | tr ':' '+')"
echo "# Demonstrating with dom0:$PORT (${LINE#* })"
echo

step "Available as the management qube: allowed by examples/policy.d/include/admin-local-rwx" \
    mgmt @adminvm admin.vm.device.pci.Available
step "Available as a work qube: no rule allows it, so PermissionDenied" \
    work @adminvm admin.vm.device.pci.Available
step "Assign as the management qube to work, a qube it created: allowed, recorded before the reply" \
    mgmt work "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assign from the work qube itself: denied by policy, nothing recorded" \
    work media "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assign with no-strict-reset from the management qube: options need their own grant, which nobody has" \
    mgmt work "admin.vm.device.pci.Assign+$DEV" "mode='required' _no-strict-reset='True'"
step "Assign the same device to media too: allowed (a warning is logged), only one may run at a time" \
    mgmt media "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assigned for work, as the management qube sees it" \
    mgmt work admin.vm.device.pci.Assigned
step "Assign to personal, a pvh qube: refused with the way out" \
    dom0 personal "admin.vm.device.pci.Assign+$DEV" "mode='required'"

echo "== work starts: the libvirt hook runs prepare-start, which prints the <hostdev> XML (--no-bind: /sys untouched)"
"$BIN" prepare-start --no-bind work
sed -i '/"work":/s/"Halted"/"Running"/' "$TMP/system-info.json"
echo
echo "== media starts while work runs with the device: refused, naming the device, the other qube and the fix"
rc=0
"$BIN" prepare-start --no-bind media || rc=$?
echo "   (exit status $rc: libvirt aborts the start)"
echo
step "Attach to the running sys-net: no hot-plug for PCI, the reply says what to do instead" \
    dom0 sys-net "admin.vm.device.pci.Attach+$DEV" "mode='required'"
step "Attached for work: what the running qube holds" \
    dom0 work admin.vm.device.pci.Attached
echo "== work stops: the hook runs release; the device stays on pciback"
"$BIN" release work
sed -i '/"work":/s/"Running"/"Halted"/' "$TMP/system-info.json"
echo
echo "== media can start now"
"$BIN" prepare-start --no-bind media >/dev/null && echo "   prepare-start media: exit status 0"
echo
echo "== How the policy decides (qubes-pci-admin policy eval)"
"$BIN" policy eval mgmt work "admin.vm.device.pci.Assign+$DEV" || echo "   (exit status $?)"
"$BIN" policy eval mgmt work "admin.vm.device.pci.Option+no-strict-reset" || echo "   (exit status $?)"
echo
echo "== The same from a management qube with the qubes-pci client (here its transport is"
echo "   'qubes-pci-admin call --source mgmt --target' instead of qrexec-client-vm)"
CLIENT="$PWD/target/release/qubes-pci --transport"
TRANSPORT="$BIN call --source mgmt --target"
echo "   \$ qubes-pci assigned media"
$CLIENT "$TRANSPORT" assigned media
echo "   \$ qubes-pci --json unassign media dom0:$PORT"
$CLIENT "$TRANSPORT" --json unassign media "dom0:$PORT"
rc=0
echo "   \$ qubes-pci unassign media dom0:$PORT   (again: DeviceNotAssigned, exit status 6)"
$CLIENT "$TRANSPORT" unassign media "dom0:$PORT" || rc=$?
echo "   (exit status $rc)"
echo
echo "== The store (qubes-pci-admin store dump)"
"$BIN" store dump
