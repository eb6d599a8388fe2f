#!/usr/bin/env bash
# A scripted session against this machine's real /sys, with the example
# policy in examples/policy.d and the stand-in for qubesd the project ships
# (tests/standin/qubesd-standin.py, keeping examples/qubes.xml's qubes in a
# throw-away copy). Nothing is written to /sys.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "Building qubes-pci-admin (cargo build --release; a few minutes the first time, seconds after) ..."
cargo build --release --quiet
echo "Built. Replies are shown raw, as qrexec carries them, with each NUL byte written \\0:"
echo "0\\0BODY is success, 2\\0TYPE\\0\\0MESSAGE\\0 a refusal that qvm-pci prints as 'Error: MESSAGE'."
echo
BIN=$PWD/target/release/qubes-pci-admin
TMP=$(mktemp -d)
cp examples/qubes.xml "$TMP/qubes.xml"
export QUBES_PCI_ADMIN_SYSFS=${QUBES_PCI_ADMIN_SYSFS:-/sys}
export QUBES_PCI_ADMIN_POLICY_DIR=examples/policy.d
export QUBES_PCI_ADMIN_QUBESD_SOCKET=$TMP/qubesd.sock
export QUBES_PCI_ADMIN_QUBESD_INTERNAL_SOCKET=$TMP/qubesd.internal.sock
export QUBES_PCI_ADMIN_QUBES_XML=$TMP/qubes.xml
export QUBES_PCI_ADMIN_LOG=${QUBES_PCI_ADMIN_LOG:-error}

# The stand-in for qubesd (not qubesd: see its docstring). Its start check
# asks `qubes-pci-admin check start`, as the qubesd extension does.
python3 tests/standin/qubesd-standin.py --qubes-xml "$TMP/qubes.xml" \
    --admin-socket "$TMP/qubesd.sock" --internal-socket "$TMP/qubesd.internal.sock" \
    --check-bin "$BIN" --sysfs "$QUBES_PCI_ADMIN_SYSFS" > "$TMP/standin.out" &
STANDIN=$!
trap 'kill $STANDIN 2>/dev/null; wait $STANDIN 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do grep -q ready "$TMP/standin.out" 2>/dev/null && break; sleep 0.05; done

# What a dom0 tool sends straight to qubesd (the raw reply, NULs as \0).
qubesd() {
    python3 - "$TMP/qubesd.sock" "$@" <<'PY'
import socket, sys
sock, method, dest = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX); s.connect(sock)
s.sendall(f"{method} dom0 name {dest}\0".encode()); s.shutdown(socket.SHUT_WR)
out = b""
while (c := s.recv(65536)):
    out += c
print(out.replace(b"\0", b"\\0").decode(errors="replace"))
PY
}
for q in sys-net sys-usb mgmt sys-gui; do qubesd admin.vm.Start "$q" >/dev/null; done

# Runs one call through the front door and prints the raw reply with NUL
# bytes shown as \0 (long listings cut to their first lines).
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
# a bridge (class 0x06xx). Its qrexec argument form is dom0+PORT+DEVICE_ID
# with ':' written as '+'.
LINE=$("$BIN" call --source dom0 --target @adminvm admin.vm.device.pci.Available \
    | tr '\0' '\n' | grep -v "interfaces='p06" | grep "port_id=" | head -n 1 || true)
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
step "Available as a work qube: no rule allows it, so a typed refusal (qvm-pci skips what it may not read)" \
    work @adminvm admin.vm.device.pci.Available
step "Assign as the management qube to work, a qube it created: checked, then sent to qubesd, which records it" \
    mgmt work "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assign from the work qube itself: denied by policy; qubesd never hears of it" \
    work media "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assign with no-strict-reset from the management qube: options need their own grant, which nobody has" \
    mgmt work "admin.vm.device.pci.Assign+$DEV" "mode='required' _no-strict-reset='True'"
step "Assign in mode auto-attach: refused, PCI devices reach a qube only at its start, as required" \
    mgmt media "admin.vm.device.pci.Assign+$DEV" "mode='auto-attach'"
QUBES_PCI_ADMIN_LOG=warn step "Assign the same device to media too: allowed, with a warning in dom0's log (shown here), only one may run at a time" \
    mgmt media "admin.vm.device.pci.Assign+$DEV" "mode='required'"
step "Assigned for work, as the management qube sees it: read from qubesd's qubes.xml" \
    mgmt work admin.vm.device.pci.Assigned
step "Assign to personal, a pvh qube: refused with the way out" \
    dom0 personal "admin.vm.device.pci.Assign+$DEV" "mode='required'"

# A device dom0 itself uses (its root disk's controller, console GPU, ...), if any.
USED=$("$BIN" list --json | python3 -c 'import json, sys
rows = [d for d in json.load(sys.stdin) if d["used_by_dom0"]]
print(rows[0]["port_id"] if rows else "")')
if [ -n "$USED" ]; then
    step "Assign dom0:$USED, which dom0 itself uses: refused at a qube's request (dom0 could, with a warning)" \
        mgmt work "admin.vm.device.pci.Assign+dom0+$USED" "mode='required'"
fi

echo "== What would stop work's start, and what to do about it"
echo "   \$ qubes-pci-admin preflight work"
rc=0
"$BIN" preflight work || rc=$?
echo "   (exit status $rc)"
echo
NSR=""
if { "$BIN" preflight --json work || true; } | grep -q '"no-reset"'; then
    NSR=" _no-strict-reset='True'"
    echo "== This device has no reset method (virtual devices often have none), so dom0 gives work's and"
    echo "   media's assignments no-strict-reset, as preflight says (dom0 needs no grant for it)"
    for q in work media; do
        printf '%s' "mode='required'$NSR" | "$BIN" call --source dom0 --target "$q" "admin.vm.device.pci.Assign+$DEV" >/dev/null
    done
    echo
fi
echo "== work starts (admin.vm.Start to qubesd; the start check passes)"
qubesd admin.vm.Start work
echo
echo "== media starts while work runs with the device: refused, naming the device, the other qube and the fix"
qubesd admin.vm.Start media
echo
step "Attach to the running sys-net: no hot-plug for PCI, the reply says what to do instead" \
    dom0 sys-net "admin.vm.device.pci.Attach+$DEV" "mode='required'"
step "Detach from the running work: refused too, a detached device is never handed back to dom0" \
    dom0 work "admin.vm.device.pci.Detach+$DEV"
step "Attached for work: what qubesd says the running qube holds" \
    dom0 work admin.vm.device.pci.Attached
echo "== work stops; media can start now"
qubesd admin.vm.Kill work
qubesd admin.vm.Start media
echo
echo "== How the policy decides (qubes-pci-admin policy eval; the system info is examples/system-info.json)"
for svc in "admin.vm.device.pci.Assign+$DEV" "admin.vm.device.pci.Option+no-strict-reset"; do
    echo "   \$ qubes-pci-admin policy eval mgmt work $svc"
    rc=0
    "$BIN" --system-info examples/system-info.json policy eval mgmt work "$svc" || rc=$?
    echo "   (exit status $rc)"
done
echo
echo "== The same from a management qube with the qubes-pci client (here its transport is"
echo "   'qubes-pci-admin call --source mgmt --target' instead of qrexec-client-vm)"
CLIENT="$PWD/target/release/qubes-pci --transport"
TRANSPORT="$BIN call --source mgmt --target"
echo "   \$ qubes-pci assigned media"
$CLIENT "$TRANSPORT" assigned media
qubesd admin.vm.Kill media >/dev/null
echo "   \$ qubes-pci --json unassign media dom0:$PORT"
$CLIENT "$TRANSPORT" --json unassign media "dom0:$PORT"
rc=0
echo "   \$ qubes-pci unassign media dom0:$PORT   (again: qubesd says DeviceNotAssigned, exit status 6)"
$CLIENT "$TRANSPORT" unassign media "dom0:$PORT" || rc=$?
echo "   (exit status $rc)"
echo
echo "== qubesd's record: the <device> entries of its qubes.xml, and qubes-pci-admin list"
grep -o '<device [^>]*>' "$TMP/qubes.xml" || echo "(none left)"
echo "   (then dom0 assigns it to sys-usb too and restarts sys-usb)"
printf '%s' "mode='required'$NSR" | "$BIN" call --source dom0 --target sys-usb "admin.vm.device.pci.Assign+$DEV" >/dev/null
qubesd admin.vm.Kill sys-usb >/dev/null
qubesd admin.vm.Start sys-usb >/dev/null
"$BIN" list
