#!/usr/bin/env python3
"""End to end against upstream qubesd's own code (run offline by server.py).

    check.py RUNDIR BIN SERVER_PY [CLIENT_TREE]
    check.py --serve RUNDIR BIN SERVER_PY

With --serve it only sets RUNDIR up, starts qubesd, prints `serving` and
keeps it running until its standard input closes (for the benchmark).

Environment: UPSTREAM_ADMIN_TREE, REAL_QUBESD_PYTHON, REAL_QUBESD_PYTHONPATH
(from setup.sh, with this project's service/qubesd-ext installed), and
QUBES_PCI_ADMIN_PCI_IDS. RUNDIR/sys must hold the fake sysfs. With
CLIENT_TREE (an extracted QubesOS/qubes-core-admin-client), the stock
qvm-pci is run too, as a management qube runs it (qrexec-client-vm replaced
by a script that starts this project's exec service the way qrexec does).

Checks, each an assertion:
  1. our extension is loaded by upstream's own extension loading;
  2. an Assign through the front door lands in qubes.xml, and the libvirt
     XML qubesd renders for the qube has the <hostdev>;
  3. a stock qvm-pci assign works, and a refusal of the front door reaches
     it as `Error: ...` with exit status 1, not a traceback;
  4. a multi-function split sent straight to qubesd is refused by the
     extension, with qubes.xml unchanged;
  5. a start is refused while another running qube holds the device, and
     passes our check once it stopped;
  6. a direct Attach into a running qube is refused by the extension.
Then the facts a stock R4.3 dom0 holds (issue "One set of facts"):
  7. a feature set through qubesd is stored as a string (`internal` on
     default-mgmt-dvm is "1" in internal.GetSystemInfo) and every call
     still works;
  8. a qube whose virt_mode is qubesd's default (pvh until its first PCI
     assignment) gets its first device through the front door;
  9. an auto-attach record of a bridge made before the service (as stock
     qvm-pci assign without --required makes) cannot be turned into
     required, through the front door or straight to qubesd;
 10. a deny rule on the port-only spelling holds for the port + device id
     spelling;
 11. an option value other than True straight to qubesd is refused;
 12. a qube without grants running the stock qvm-pci list is told it has
     no access (not an empty list);
 14. with QUBES_MANAGER_SRC (an extracted QubesOS/qubes-manager) and PyQt6
     (MANAGER_SITE, a directory holding it): the real Qube Settings dialog's
     Devices tab lists, assigns and unassigns through the front door, and
     shows rule and policy refusals as error dialogs (manager.py);
 13. a record written by R4.2 (BDF port, required=, identity option) reads
     through the front door exactly as qubesd lists it (checked first,
     while the file still has the R4.2 form: qubesd rewrites it on its
     next save).
Prints one line per check; exits 1 on the first failure.
"""
import json
import os
import socket
import subprocess
import sys
import time

SERVE = sys.argv[1:2] == ["--serve"]
ARGS = sys.argv[2:] if SERVE else sys.argv[1:]
RUN, BIN, SERVER = (os.path.abspath(a) for a in ARGS[0:3])
CLIENT = os.path.abspath(ARGS[3]) if len(ARGS) > 3 else None

QUBES_XML = """<?xml version='1.0' encoding='utf-8'?>
<qubes version="3.0">
  <labels>
    <label id="label-1" color="0xcc0000">red</label>
    <label id="label-8" color="0x000000">black</label>
  </labels>
  <pools>
    <pool name="varlibqubes" dir_path="{run}/varlib" driver="file" revisions_to_keep="-1"/>
    <pool name="linux-kernel" dir_path="{run}/vm-kernels" driver="linux-kernel"/>
  </pools>
  <properties>
    <property name="default_pool">varlibqubes</property>
    <property name="default_kernel">6.6.48-1.fc37</property>
  </properties>
  <domains>
    <domain id="domain-0" class="AdminVM">
      <properties><property name="label">black</property></properties>
      <features/><tags/>
    </domain>
{qubes}
  </domains>
</qubes>
"""

QUBE = """    <domain id="domain-{qid}" class="StandaloneVM">
      <properties>
        <property name="qid">{qid}</property>
        <property name="name">{name}</property>
        <property name="uuid">{uuid}</property>
        <property name="label">red</property>
        {virt_mode}
        <property name="kernel"></property>
      </properties>
      <features/>
      <tags>{tags}</tags>{devices}
      <volume-config>
        <volume name="root" pool="varlibqubes" vid="appvms/{name}/root" size="1073741824" save_on_stop="True" snap_on_start="False"/>
        <volume name="private" pool="varlibqubes" vid="appvms/{name}/private" size="1073741824" save_on_stop="True" snap_on_start="False"/>
        <volume name="volatile" pool="varlibqubes" vid="appvms/{name}/volatile" size="1073741824" save_on_stop="False" snap_on_start="False"/>
        <volume name="kernel" pool="varlibqubes" vid="appvms/{name}/kernel" size="1048576" save_on_stop="False" snap_on_start="False" rw="False"/>
      </volume-config>
    </domain>"""

POLICY = """\
admin.vm.device.pci.Available * mgmt @adminvm allow target=dom0
admin.vm.device.pci.Attached * mgmt @adminvm allow target=dom0
admin.vm.device.pci.Assign * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.device.pci.Unassign * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.device.pci.Assigned * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.device.pci.Attached * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.device.pci.Set.assignment * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.List * mgmt @adminvm allow target=dom0
admin.vm.List * mgmt @tag:created-by-mgmt allow target=dom0
admin.vm.List * mgmt sys-usb allow target=dom0
admin.vm.List * nogrant @adminvm allow target=dom0
admin.vm.List * nogrant @anyvm allow target=dom0
"""

USB = "dom0+00_14.0+0x8086+0x8cb1++p0c0330"
USB_SIBLING = "dom0+00_14.2+0x8086+0x8cb2++p118000"
NIC = "dom0+00_1f.6+0x8086+0x15a3++p020000"


def ok(what):
    print(f"ok   {what}", flush=True)


def fail(what, detail):
    print(f"FAIL {what}: {detail}", flush=True)
    sys.exit(1)


def expect(cond, what, detail=""):
    if not cond:
        fail(what, detail)


def qubesd(method, arg, dest, payload=b"", source="dom0", sock="qubesd.sock"):
    """One request straight to qubesd (as dom0's qvm-pci does)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(os.path.join(RUN, sock))
    s.sendall(f"{method}+{arg} {source} name {dest}\0".encode() + payload)
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def harness(**req):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(os.path.join(RUN, "harness.sock"))
    s.sendall(json.dumps(req).encode())
    s.shutdown(socket.SHUT_WR)
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    answer = json.loads(out)
    expect(answer.get("ok"), f"harness {req}", answer)
    return answer


def front_env():
    env = dict(os.environ)
    env.update({
        "QUBES_PCI_ADMIN_SYSFS": os.path.join(RUN, "sys"),
        "QUBES_PCI_ADMIN_PROCFS": os.path.join(RUN, "proc"),
        "QUBES_PCI_ADMIN_POLICY_DIR": os.path.join(RUN, "policy.d"),
        "QUBES_PCI_ADMIN_QUBESD_SOCKET": os.path.join(RUN, "qubesd.sock"),
        "QUBES_PCI_ADMIN_QUBESD_INTERNAL_SOCKET": os.path.join(RUN, "qubesd.internal.sock"),
        "QUBES_PCI_ADMIN_QUBES_XML": os.path.join(RUN, "qubes.xml"),
        "QUBES_PCI_ADMIN_LOG": "warn",
    })
    return env


def front(source, dest, method, payload=b""):
    p = subprocess.run([BIN, "call", "--source", source, "--target", dest, method],
                       input=payload, capture_output=True, env=front_env(), timeout=60)
    return p.stdout


def pci_entries(qube):
    """The PCI <device> entries of a qube in qubes.xml now."""
    import xml.etree.ElementTree as ET
    root = ET.parse(os.path.join(RUN, "qubes.xml")).getroot()
    for d in root.iter("domain"):
        names = [p.text for p in d.iter("property") if p.get("name") == "name"]
        if names == [qube]:
            return [dict(dev.attrib) for devs in d.findall("devices") if devs.get("class") == "pci"
                    for dev in devs.findall("device")]
    return []


def write_client_shim():
    """qrexec-client-vm for a management qube named mgmt: PCI methods go to
    our exec service (run the way qrexec runs /etc/qubes-rpc/<method>),
    everything else to qubesd."""
    bindir = os.path.join(RUN, "qubes-rpc")
    os.makedirs(bindir, exist_ok=True)
    shim = os.path.join(RUN, "qrexec-client-vm")
    with open(shim, "w") as f:
        f.write(f"""#!{sys.executable}
import os, socket, sys
dest, service = sys.argv[1], sys.argv[2]
source = os.environ.get("SHIM_SOURCE", "mgmt")
method, _, arg = service.partition("+")
payload = sys.stdin.buffer.read()
if method.startswith("admin.vm.device.pci."):
    link = os.path.join({bindir!r}, method)
    if not os.path.exists(link):
        os.symlink({BIN!r}, link)
    env = dict(os.environ, QREXEC_REMOTE_DOMAIN=source, QREXEC_SERVICE_ARGUMENT=arg,
               QREXEC_SERVICE_FULL_NAME=service)
    if dest.startswith("@"):
        env.update(QREXEC_REQUESTED_TARGET_TYPE="keyword", QREXEC_REQUESTED_TARGET_KEYWORD=dest[1:])
    else:
        env.update(QREXEC_REQUESTED_TARGET_TYPE="name", QREXEC_REQUESTED_TARGET=dest)
    import subprocess
    p = subprocess.run([link] + ([arg] if arg else []), input=payload, env=env, capture_output=True)
    sys.stdout.buffer.write(p.stdout)
    sys.exit(p.returncode)
s = socket.socket(socket.AF_UNIX)
s.connect({os.path.join(RUN, "qubesd.sock")!r})
kind, name = ("keyword", dest[1:]) if dest.startswith("@") else ("name", dest)
s.sendall(f"{{service}} {{source}} {{kind}} {{name}}\\0".encode() + payload)
s.shutdown(socket.SHUT_WR)
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk)
""")
    os.chmod(shim, 0o755)
    return shim


def qvm_pci(shim, *args, source="mgmt"):
    code = f"""
import sys
sys.argv = ["qvm-pci"] + {list(args)!r}
import builtins, os
_open = builtins.open
def _open_ids(f, *a, **k):  # a management qube has hwdata's pci.ids; this machine may not
    if f == "/usr/share/hwdata/pci.ids" and not os.path.exists(f):
        f = os.environ["QUBES_PCI_ADMIN_PCI_IDS"]
    return _open(f, *a, **k)
builtins.open = _open_ids
import qubesadmin.config
qubesadmin.config.QREXEC_CLIENT_VM = {shim!r}
import qubesadmin.tools.qvm_device as t
sys.exit(t.main({list(args)!r}))
"""
    # the client reads its own package metadata (version): give it some
    meta = os.path.join(RUN, "clientsite", "qubesadmin-4.3.dist-info")
    os.makedirs(meta, exist_ok=True)
    with open(os.path.join(meta, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: qubesadmin\nVersion: 4.3\n")
    env = dict(front_env(), PYTHONPATH=os.pathsep.join([CLIENT, os.path.join(RUN, "clientsite")]),
               SHIM_SOURCE=source)
    env.pop("QUBES_PCI_ADMIN_LOG", None)
    p = subprocess.run([os.environ["REAL_QUBESD_PYTHON"], "-c", code], capture_output=True,
                       env=env, timeout=120)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def main():
    mine = '<tag name="created-by-mgmt"/>'
    # legacy: what R4.2 wrote (a BDF port, required=, the identity option)
    # and what stock qvm-pci assign without --required makes (auto-attach)
    legacy = """
      <devices class="pci">
        <device backend-domain="dom0" id="02_00.0" required="True"><option name="identity">0x8086:0x08b1::p028000</option></device>
        <device backend-domain="dom0" id="00_1c.0" mode="auto-attach" identity="0x8086:0x8c10::p060400"/>
      </devices>"""
    qubes = [("sys-usb", 1, "hvm", "", ""), ("work", 2, "hvm", mine, ""),
             ("mgmt", 3, "pvh", "", ""), ("media", 4, "hvm", mine, ""),
             ("default-mgmt-dvm", 5, "pvh", "", ""), ("fresh", 6, None, mine, ""),
             ("legacy", 7, "hvm", mine, legacy), ("nogrant", 8, "pvh", "", "")]
    with open(os.path.join(RUN, "qubes.xml"), "w") as f:
        f.write(QUBES_XML.format(run=RUN, qubes="\n".join(
            QUBE.format(qid=qid, name=n, tags=t, devices=d,
                        virt_mode=f'<property name="virt_mode">{vm}</property>' if vm else "",
                        uuid=f"00000000-0000-0000-0000-{qid:012d}") for n, qid, vm, t, d in qubes)))
    kernel = os.path.join(RUN, "vm-kernels", "6.6.48-1.fc37")
    os.makedirs(kernel, exist_ok=True)
    for name in ("vmlinuz", "initramfs", "modules.img"):
        open(os.path.join(kernel, name), "wb").close()
    # dom0's procfs for that sysfs: virtual filesystems mounted, no swap
    os.makedirs(os.path.join(RUN, "proc", "self"), exist_ok=True)
    with open(os.path.join(RUN, "proc", "self", "mountinfo"), "w") as f:
        f.write("20 1 0:22 / /proc rw - proc proc rw\n21 1 0:21 / /sys rw - sysfs sysfs rw\n")
    with open(os.path.join(RUN, "proc", "swaps"), "w") as f:
        f.write("Filename\tType\tSize\tUsed\tPriority\n")
    os.makedirs(os.path.join(RUN, "policy.d"), exist_ok=True)
    with open(os.path.join(RUN, "policy.d", "30-test.policy"), "w") as f:
        f.write(POLICY)
    env = dict(front_env(), QUBES_PCI_ADMIN_BIN=BIN, PYTHONPATH=os.environ["REAL_QUBESD_PYTHONPATH"],
               PYTHONDONTWRITEBYTECODE="1")
    log = open(os.path.join(RUN, "server.log"), "w")
    server = subprocess.Popen([os.environ["REAL_QUBESD_PYTHON"], SERVER, RUN], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(RUN, "ready.json")):
            if server.poll() is not None or time.time() > deadline:
                fail("qubesd starts", open(os.path.join(RUN, "server.log")).read()[-3000:])
            time.sleep(0.2)
        ready = json.load(open(os.path.join(RUN, "ready.json")))
        if SERVE:
            print("serving", flush=True)
            sys.stdin.read()
        else:
            run_checks(ready)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def run_checks(ready):
    expect("qubes_pci_admin_ext:PciAdminExtension" in ready["extensions"],
           "1. upstream's loader loads our extension", ready["extensions"])
    ok("1. upstream's loader loads our extension")
    # Before any write: qubesd keeps the R4.2 form in the file until it
    # next saves it.
    ours = front("dom0", "legacy", "admin.vm.device.pci.Assigned")
    theirs = qubesd("admin.vm.device.pci.Assigned", "", "legacy")
    expect(b"port_id='00_1c.0-00_00.0'" in theirs, "13. qubesd converts the BDF port", theirs)
    expect(ours == theirs, "13. the front door lists what qubesd lists", (ours, theirs))
    ok("13. an R4.2 record (BDF port, required=, identity option) reads as qubesd holds it")

    out = front("mgmt", "work", f"admin.vm.device.pci.Assign+{USB}", b"mode='required'")
    expect(out == b"0\0", "2. Assign through the front door", out)
    entries = pci_entries("work")
    expect([(e.get("id"), e.get("mode"), e.get("identity")) for e in entries]
           == [("00_14.0", "required", "0x8086:0x8cb1::p0c0330")], "2. it lands in qubes.xml", entries)
    xml = harness(cmd="render", vm="work")["xml"]
    expect("<hostdev" in xml and "slot=\"0x14\"" in xml.replace("'", '"'), "2. rendered libvirt XML has the <hostdev>", xml)
    listed = front("mgmt", "work", "admin.vm.device.pci.Assigned")
    expect(listed.startswith(b"0\0dom0+00_14.0:0x8086:0x8cb1::p0c0330 "), "2. Assigned reads it back", listed)
    ok("2. Assign through the front door lands in qubes.xml and in the rendered <hostdev>")

    if CLIENT:
        shim = write_client_shim()
        code, out, err = qvm_pci(shim, "assign", "--required", "media", "dom0:00_1f.6")
        expect(code == 0, "3. stock qvm-pci assign through the front door", (code, out, err))
        expect([e.get("id") for e in pci_entries("media")] == ["00_1f.6"], "3. ... lands in qubes.xml",
               pci_entries("media"))
        xml = harness(cmd="render", vm="media")["xml"].replace("'", '"')
        expect("<hostdev" in xml and 'slot="0x1f"' in xml and 'function="0x6"' in xml,
               "3. ... and in media's rendered <hostdev>", xml)
        code, out, err = qvm_pci(shim, "assign", "--required", "-o", "permissive=True", "work", "dom0:00_1f.6")
        expect(code == 1 and "Error:" in err + out and "Traceback" not in err, "3. option refusal is Error:",
               (code, out, err))
        print(f"     qvm-pci assign -o permissive=True: exit {code}: {err.strip()}")
        code, out, err = qvm_pci(shim, "assign", "--required", "sys-usb", "dom0:00_1f.6")
        expect(code == 1 and "Error:" in err + out and "Traceback" not in err, "3. policy refusal is Error:",
               (code, out, err))
        print(f"     qvm-pci assign to sys-usb (no grant): exit {code}: {err.strip()}")
        code, out, err = qvm_pci(shim, "list")
        expect(code == 0 and "dom0:00_14.0" in out and "Traceback" not in err, "3. stock qvm-pci list",
               (code, out, err))
        print("     qvm-pci list:\n" + "\n".join("       " + line for line in out.splitlines()))
        ok("3. stock qvm-pci assign goes through the front door to qubes.xml and the <hostdev>; "
           "refusals print Error: and exit 1; qvm-pci list works")
    else:
        print("skip 3. stock client (no QubesOS/qubes-core-admin-client tree given)")

    before = open(os.path.join(RUN, "qubes.xml"), "rb").read()
    out = qubesd("admin.vm.device.pci.Assign", USB_SIBLING, "sys-usb", b"mode='required'")
    expect(out.startswith(b"2\0QubesValueError\0") and b"no-strict-reset" in out,
           "4. multi-function split straight to qubesd is refused by the extension", out)
    expect(open(os.path.join(RUN, "qubes.xml"), "rb").read() == before, "4. qubes.xml unchanged")
    ok("4. a multi-function split sent straight to qubesd is refused; qubes.xml unchanged")

    out = qubesd("admin.vm.device.pci.Assign", USB, "sys-usb", b"mode='required'")
    expect(out == b"0\0", "5. dom0 assigns the same device to a second qube", out)
    harness(cmd="running", vm="work", on=True)
    out = qubesd("admin.vm.Start", "", "sys-usb")
    expect(out.startswith(b"2\0") and b"in use by work" in out, "5. start refused while work holds it", out)
    harness(cmd="running", vm="work", on=False)
    out = qubesd("admin.vm.Start", "", "sys-usb")
    expect(b"createWithFlags reached" in out, "5. start passes our check once work stopped", out)
    ok("5. a start is refused while another running qube holds the device, allowed after")

    harness(cmd="running", vm="work", on=True)
    out = qubesd("admin.vm.device.pci.Attach", NIC, "work", b"mode='manual'")
    expect(out.startswith(b"2\0QubesVMNotHaltedError\0") and b"no hot-plug" in out,
           "6. direct Attach into a running qube is refused", out)
    out = qubesd("admin.vm.device.pci.Detach", USB, "work")
    expect(out.startswith(b"2\0QubesVMNotHaltedError\0"), "6. direct Detach from a running qube is refused", out)
    ok("6. direct Attach/Detach on a running qube are refused by the extension")
    stock_dom0_facts()
    qube_settings()
    print("real qubesd: all checks passed")


def qube_settings():
    tree = os.environ.get("QUBES_MANAGER_SRC")
    if not (CLIENT and tree):
        print("skip 14. Qube Settings dialog (set QUBES_MANAGER_SRC and give the client tree)")
        return
    env = dict(front_env(), SHIM_SOURCE="mgmt", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.environ.get("MANAGER_SITE", ""))
    p = subprocess.run([os.environ["REAL_QUBESD_PYTHON"], os.path.join(os.path.dirname(SERVER), "manager.py"),
                        RUN, tree, CLIENT, os.path.join(RUN, "qrexec-client-vm")],
                       capture_output=True, env=env, timeout=600)
    expect(p.returncode == 0, "14. the Qube Settings dialog runs", p.stderr.decode()[-3000:])
    r = json.loads(p.stdout.decode().strip().splitlines()[-1])
    expect(r["tab_enabled"] and "00_1f.6" in r["selected"], "14. Devices tab lists media's device", r)
    expect("00_1c.0" not in r["available"] and "00_00.0" not in r["available"]
           and "00_14.0" in r["available"], "14. ... and dom0's devices but bridges", r["available"])
    expect(r["assign"] == [] and "00_1c.0-00_00.0" in r["after_assign"], "14. assign", r)
    expect(r["unassign"] == [] and "00_1c.0-00_00.0" not in r["after_unassign"], "14. unassign", r)
    expect(any("same physical device" in w for w in r["rule_refusal"]), "14. rule refusal dialog",
           r["rule_refusal"])
    expect(any("denied by dom0's qrexec policy" in w for w in r["policy_refusal"]), "14. policy refusal dialog",
           r["policy_refusal"])
    expect(any("Option+no-strict-reset" in w for w in r["option_without_grant"]), "14. option needs its grant",
           r["option_without_grant"])
    expect(r["option_with_grant"] == [] and "00_1c.0-00_00.0" in r["after_option"], "14. option with grant", r)
    for key in ("rule_refusal", "policy_refusal", "option_without_grant"):
        print(f"     {key}: {r[key][0].replace(chr(10), ' ')[:400]}")
    ok("14. the Qube Settings dialog lists, assigns, unassigns, and shows rule and policy refusals")


def stock_dom0_facts():
    out = qubesd("admin.vm.feature.Set", "internal", "default-mgmt-dvm", b"1")
    expect(out == b"0\0", "7. qubesd sets the internal feature", out)
    info = json.loads(qubesd("internal.GetSystemInfo", "", "dom0", sock="qubesd.internal.sock")[2:])
    expect(info["domains"]["default-mgmt-dvm"]["internal"] == "1", "7. ... as a string",
           info["domains"]["default-mgmt-dvm"])
    out = front("mgmt", "@adminvm", "admin.vm.device.pci.Available")
    expect(out.startswith(b"0\0") and b"00_14.0" in out, "7. the front door still answers", out[:300])
    ok("7. a feature stored as a string (internal=\"1\") does not stop the service")

    out = qubesd("admin.vm.property.Get", "virt_mode", "fresh")
    expect(out == b"0\0default=True type=str pvh", "8. fresh has qubesd's default virt_mode", out)
    out = front("mgmt", "fresh", "admin.vm.device.pci.Assign+dom0+0001_00_02.0+_", b"mode='required'")
    expect(out == b"0\0", "8. its first PCI device through the front door", out)
    out = qubesd("admin.vm.property.Get", "virt_mode", "fresh")
    expect(out == b"0\0default=True type=str hvm", "8. ... after which qubesd's default is hvm", out)
    ok("8. a qube with qubesd's default virt_mode (pvh) gets its first PCI device")

    before = open(os.path.join(RUN, "qubes.xml"), "rb").read()
    out = front("mgmt", "legacy", "admin.vm.device.pci.Set.assignment+dom0+00_1c.0+_", b"required")
    expect(out.startswith(b"2\0QubesValueError\0") and b"bridge" in out, "9. front door refuses", out)
    out = qubesd("admin.vm.device.pci.Set.assignment", "dom0+00_1c.0+0x8086+0x8c10++p060400", "legacy",
                 b"required")
    expect(out.startswith(b"2\0QubesValueError\0") and b"bridge" in out, "9. the extension refuses", out)
    expect(open(os.path.join(RUN, "qubes.xml"), "rb").read() == before, "9. qubes.xml unchanged")
    ok("9. an auto-attach bridge record cannot be turned into required, front door or straight to qubesd")

    deny = os.path.join(RUN, "policy.d", "20-deny.policy")
    with open(deny, "w") as f:
        f.write("admin.vm.device.pci.Unassign +dom0+0001_00_02.0+_ mgmt @anyvm deny\n")
    out = front("mgmt", "fresh", "admin.vm.device.pci.Unassign+dom0+0001_00_02.0+0x144d+0xa808++p010802")
    expect(out.startswith(b"2\0QubesDaemonAccessError\0"), "10. a deny on one spelling holds for another", out)
    expect([e.get("id") for e in pci_entries("fresh")] == ["0001_00_02.0"], "10. still assigned",
           pci_entries("fresh"))
    os.unlink(deny)
    ok("10. a deny rule on the port-only spelling holds for the port + device id spelling")

    before = open(os.path.join(RUN, "qubes.xml"), "rb").read()
    for value in (b"False", b"0", b"no"):
        out = qubesd("admin.vm.device.pci.Assign", "dom0+00_1c.0-00_00.0", "work",
                     b"mode='required' _permissive='" + value + b"'")
        expect(out.startswith(b"2\0QubesValueError\0") and b"leave the option out" in out,
               f"11. permissive={value!r} straight to qubesd is refused", out)
    expect(open(os.path.join(RUN, "qubes.xml"), "rb").read() == before, "11. qubes.xml unchanged")
    ok("11. option values other than True straight to qubesd are refused by the extension")

    if CLIENT:
        shim = os.path.join(RUN, "qrexec-client-vm")
        code, out, err = qvm_pci(shim, "list", source="nogrant")
        expect(code == 1 and "do not have access" in err + out and "Traceback" not in err,
               "12. qvm-pci list without grants says so", (code, out, err))
        print(f"     qvm-pci list by a qube without grants: exit {code}: {err.strip()}")
        code, out, err = qvm_pci(shim, "list")
        expect(code == 0 and "dom0:00_14.0" in out, "12. ... and still lists for mgmt", (code, out, err))
        ok("12. stock qvm-pci list by a qube without grants is told it has no access")
    else:
        print("skip 12. stock client (no QubesOS/qubes-core-admin-client tree given)")



if __name__ == "__main__":
    main()
