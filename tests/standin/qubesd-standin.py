#!/usr/bin/env python3
"""A STAND-IN for qubesd, for qubes-pci-admin's demo and tests. Not qubesd.

    qubesd-standin.py --qubes-xml FILE --admin-socket PATH --internal-socket PATH
                      [--log FILE] [--check-bin BIN]

It serves until SIGTERM/SIGINT or until its parent process is gone.

It speaks qubesd's socket protocol (the qrexec socket-service header
`METHOD+ARG SOURCE name|keyword DEST`, a NUL, the payload, then end of input;
reply `0\\0BODY` or `2\\0Exception\\0\\0message\\0`) for the calls the front
door makes, and keeps the assignments in a qubes.xml-shaped file that it
replaces atomically after every change, as qubesd does:

  admin socket:    admin.vm.device.pci.{Assigned,Attached,Assign,Unassign,
                   Set.assignment,Attach,Detach}, admin.vm.property.Get
                   and .Set (virt_mode, devices_denied, memory, maxmem, with
                   qubesd's defaults), admin.vm.Start, admin.vm.Kill
  internal socket: internal.GetSystemInfo
  test hook:       standin.FailNext+METHOD[=silent|=late] makes the next
                   call of METHOD fail (QubesException, or no reply at all),
                   or (late) do what it asks and answer 2 s later

It holds what qubesd holds: features as strings (`internal` is "1" on
default-mgmt-dvm), virt_mode with its default flag (pvh until the first PCI
assignment, hvm after), and port ids written by R4.2 (BDFs such as
`03_00.0`) converted to PCI paths when it loads the file (with --sysfs, as
qubesd's `sbdf_to_path`); the file keeps the old form until it is saved.

It models upstream qubesd *without* any extension: it stores what it is
given (no PCI rules), except that admin.vm.Start asks `--check-bin BIN check
start` with the facts, as the project's qubesd extension does at
domain-pre-start. Running state lives in memory: admin.vm.Start marks a
qube running and attaches its required PCI assignments (what libvirt does at
a real start); admin.vm.Kill halts it. Manual-mode Assign closes the
connection without a reply, as upstream does (a plain ValueError there).

Every request is appended to --log as one JSON object per line, so tests
can see exactly what reached "qubesd". Python standard library only.
"""
import argparse
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

MAX_REQUEST = 65536
# properties admin.vm.property.Get answers besides virt_mode: type, default
PROPERTIES = {"devices_denied": ("str", ""), "memory": ("int", "400"), "maxmem": ("int", "4000")}
LATE_SECONDS = 2
MODES = ("required", "ask-to-attach", "auto-attach", "manual")
LOCK = threading.Lock()


class Refused(Exception):
    """An exception qubesd would send: (name, message)."""

    def __init__(self, name, message):
        super().__init__(message)
        self.name = name
        self.message = message


class NoReply(Exception):
    """Upstream raises a plain Python exception: no reply at all."""


def esc(value):
    return value.replace("'", "\\'")


def pack(key, value):
    return f"{key}='{esc(value)}'"


def unpack(payload):
    """key='value' pairs; values escape only ' as \\'."""
    text = payload.decode("ascii")
    out, i = {}, 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        eq = text.index("=", i)
        key = text[i:eq]
        if text[eq + 1] != "'":
            raise Refused("ProtocolError", "malformed property list")
        j, val = eq + 2, []
        while text[j] != "'":
            if text[j] == "\\" and text[j + 1] == "'":
                val.append("'")
                j += 2
            else:
                val.append(text[j])
                j += 1
        out[key] = "".join(val)
        i = j + 1
    return out


def parse_qarg(arg):
    """backend+port[+device id with ':' as '+'] -> (backend, port, device_id)."""
    backend, _, ident = arg.partition("+")
    port, _, devid = ident.replace("+", ":").partition(":")
    port = "*" if port == "_" else port
    devid = "*" if devid in ("", "_") else devid.replace("_______", "?******")
    return backend, port, devid


def root_buses(sysfs):
    return {d[3:] for d in os.listdir(os.path.join(sysfs, "devices")) if d.startswith("pci")}


def is_pci_path(sysfs, port):
    """qubesd's is_pci_path: a path whose first hop is on a root bus."""
    if len(port) > 2 and port[2] == "_":
        port = "0000_" + port
    roots = "|".join(r.replace(":", "_") for r in root_buses(sysfs))
    return bool(re.match(r"\A(" + roots + r")_[0-9a-f]{2}\.[0-9a-f](-[0-9a-f]{2}_[0-9a-f]{2}\.[0-9a-f])*\Z", port))


BDF = re.compile(r"\A(?:pci_)?((?P<seg>[0-9a-f]{4})[_:])?(?P<bus>[0-9a-f]{2})[_:]"
                 r"(?P<dev>[0-9a-f]{2})[._](?P<fn>[0-9a-f])\Z")


def sbdf_to_path(sysfs, port):
    """qubesd's sbdf_to_path: the PCI path of a BDF, None when no device is there."""
    m = BDF.match(port)
    if not m:
        return None
    seg = m["seg"] or "0000"
    prefix = f"{seg}_" if seg != "0000" else ""
    if f"{seg}:{m['bus']}" in root_buses(sysfs):
        return f"{prefix}{m['bus']}_{m['dev']}.{m['fn']}"
    devices = os.path.join(sysfs, "bus/pci/devices")
    try:
        link = os.readlink(os.path.join(devices, f"{seg}:{m['bus']}:{m['dev']}.{m['fn']}"))
    except OSError:
        return None
    chain = link.partition(f"/pci{seg}:")[2][3:].split("/")
    hops, offset = [], 0
    for part in chain:
        b = BDF.match(part)
        if not b:
            return None
        hops.append(f"{int(b['bus'], 16) - offset:02x}_{b['dev']}.{b['fn']}")
        try:
            with open(os.path.join(devices, part, "secondary_bus_number")) as f:
                offset = int(f.read())
        except OSError:
            offset = -1
    return prefix + "-".join(hops)


class State:
    def __init__(self, path, check_bin, sysfs=None):
        self.path = path
        self.check_bin = check_bin
        self.tree = ET.parse(path)
        if sysfs:
            # as qubesd loads qubes.xml: R4.2 BDF port ids become PCI paths
            for devs in self.tree.getroot().iter("devices"):
                if devs.get("class") != "pci":
                    continue
                for node in devs.findall("device"):
                    port = node.get("id", "*")
                    if port != "*" and not is_pci_path(sysfs, port):
                        node.set("id", sbdf_to_path(sysfs, port) or port)
        self.running = {"dom0": []}  # qube -> attached assignments (dicts)
        self.late = False  # the call being answered answers late (test hook)
        self.fail_next = {}  # method -> "error" | "silent" (test hook)

    # -- the file ----------------------------------------------------------
    def domains(self):
        return self.tree.getroot().find("domains").findall("domain")

    @staticmethod
    def prop(dom, name):
        for p in dom.find("properties").findall("property"):
            if p.get("name") == name:
                return p.text or ""
        return None

    def domain(self, name):
        for d in self.domains():
            if self.prop(d, "name") == name:
                return d
        raise Refused("QubesVMNotFoundError", f"No such domain: '{name}'")

    def save(self):
        tmp = self.path + ".standin-tmp"
        self.tree.write(tmp, encoding="utf-8", xml_declaration=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def assignments(self, dom):
        out = []
        for devs in dom.findall("devices"):
            if devs.get("class") != "pci":
                continue
            for node in devs.findall("device"):
                options = {o.get("name"): o.text or "" for o in node.findall("option")}
                # as qubesd loads them: R4.2's identity option and required= attribute
                identity = options.pop("identity", None) or node.get("identity", "*")
                legacy = node.get("required")
                if legacy is not None:
                    mode = "required" if legacy.lower() in ("true", "1", "yes", "on") else "auto-attach"
                else:
                    mode = node.get("mode", "required")
                out.append({
                    "node": node, "parent": devs,
                    "backend": node.get("backend-domain", "dom0"),
                    "port": node.get("id", "*"),
                    "device_id": identity,
                    "mode": mode,
                    "options": options,
                })
        return out

    def pci_devices(self, dom):
        devs = [d for d in dom.findall("devices") if d.get("class") == "pci"]
        if devs:
            return devs[0]
        devs = ET.SubElement(dom, "devices", {"class": "pci"})
        return devs

    # -- answers -----------------------------------------------------------
    @staticmethod
    def line(qube, a):
        ser = " ".join([
            pack("device_id", a["device_id"]), pack("port_id", a["port"]),
            pack("devclass", "pci"), pack("backend_domain", a["backend"]),
            pack("mode", a["mode"]), pack("frontend_domain", qube),
        ] + [pack("_" + k, v) for k, v in a["options"].items()])
        return f"{a['backend']}+{a['port']}:{a['device_id']} {ser}\n"

    def listing(self, qube, items, arg):
        if arg:
            backend, port = arg.split("+", 1)  # no '+': no reply, as upstream
            items = [a for a in items if (a["backend"], a["port"]) == (backend, port)]
        return "".join(sorted(self.line(qube, a) for a in items))

    @staticmethod
    def feature(dom, name):
        """Features are strings in qubesd (True is stored as "1")."""
        for f in dom.findall("features/feature"):
            if f.get("name") == name:
                return f.text or ""
        return None

    def system_info(self):
        doms = {}
        for d in self.domains():
            name = self.prop(d, "name")
            tags = [t.get("name") for t in d.findall("tags/tag")]
            doms[name] = {
                "internal": self.feature(d, "internal"),
                "type": d.get("class"), "tags": tags,
                "template_for_dispvms": self.prop(d, "template_for_dispvms") == "True",
                "default_dispvm": None,
                "icon": "appvm-red", "label": "red", "guivm": self.prop(d, "guivm"),
                "relayvm": None, "transport_rpc": None,
                "power_state": "Running" if name in self.running else "Halted",
                "uuid": self.prop(d, "uuid") or "00000000-0000-0000-0000-000000000000",
            }
        return json.dumps({"domains": doms})

    def virt_mode(self, dom):
        explicit = self.prop(dom, "virt_mode")
        if explicit:
            return f"default=False type=str {explicit}"
        mode = "hvm" if self.assignments(dom) else "pvh"
        return f"default=True type=str {mode}"

    def start(self, qube):
        dom = self.domain(qube)
        if qube in self.running:
            raise Refused("QubesVMNotHaltedError", f"domain {qube} is already running")
        required = [a for a in self.assignments(dom) if a["mode"] == "required"]
        if self.check_bin:
            facts = {
                "dest": qube,
                "assignments": [dict(strip(a), qube=qube) for a in required],
                "running": [dict(strip(a), qube=q) for q, held in self.running.items()
                            if q != qube for a in held],
            }
            proc = subprocess.run([self.check_bin, "check", "start"], input=json.dumps(facts).encode(),
                                  capture_output=True, timeout=10)
            answer = json.loads(proc.stdout or b"{}")
            if not answer.get("ok"):
                raise Refused(answer.get("exception", "QubesException"),
                              answer.get("message", "the start check failed"))
        self.running[qube] = [strip(a) for a in required]
        return ""

    def handle(self, method, arg, src, dest, payload):
        if method == "standin.FailNext":
            # test hook, not qubesd: the next call of METHOD fails
            name, _, how = arg.partition("=")
            self.fail_next[name] = how or "error"
            return ""
        how = self.fail_next.pop(method, None)
        if how == "silent":
            raise NoReply()
        if how == "late":
            self.late = True
        elif how:
            raise Refused("QubesException", "injected failure")
        if method == "internal.GetSystemInfo":
            return self.system_info()
        dom = self.domain(dest)
        if method == "admin.vm.property.Get":
            if arg == "virt_mode":
                return self.virt_mode(dom)
            if arg not in PROPERTIES:
                raise Refused("QubesNoSuchPropertyError", f"Invalid property name: {arg}")
            kind, default = PROPERTIES[arg]
            if arg == "maxmem" and self.assignments(dom):
                default = "0"  # qubesd: no memory balancing with PCI devices
            explicit = self.prop(dom, arg)
            if explicit is not None:
                return f"default=False type={kind} {explicit}"
            return f"default=True type={kind} {default}"
        if method == "admin.vm.property.Set":
            value = payload.decode()
            ok = value in ("hvm", "pv", "pvh") if arg == "virt_mode" else arg in PROPERTIES
            if not ok:
                raise Refused("QubesPropertyValueError", f"Invalid value for {arg}")
            props = dom.find("properties")
            node = next((p for p in props.findall("property") if p.get("name") == arg), None)
            if node is None:
                node = ET.SubElement(props, "property", {"name": arg})
            node.text = payload.decode()
            self.save()
            return ""
        if method == "admin.vm.Start":
            return self.start(dest)
        if method == "admin.vm.Kill":
            if self.running.pop(dest, None) is None:
                raise Refused("QubesVMNotStartedError", f"Domain is powered off: {dest}")
            return ""
        if not method.startswith("admin.vm.device.pci."):
            raise Refused("ProtocolError", f"no such method: '{method}'")
        verb = method[len("admin.vm.device.pci."):]
        if verb == "Assigned":
            return self.listing(dest, self.assignments(dom), arg)
        if verb == "Attached":
            return self.listing(dest, [dict(a, mode=a.get("mode", "manual")) for a in
                                       self.running.get(dest, [])] if dest != "dom0" else [], arg)
        if verb == "Set.assignment":
            if payload.decode("ascii", "replace") not in MODES[:3]:
                raise Refused("QubesUnrecognizedDeviceAssignmentMode", "Invalid assignment mode")
        backend, port, devid = parse_qarg(arg)
        found = [a for a in self.assignments(dom) if (a["backend"], a["port"], a["device_id"]) ==
                 (backend, port, devid)]
        name = f"{backend}:{port}:{devid}"
        if verb == "Assign":
            props = unpack(payload)
            mode = props.get("mode", "manual")
            if found:
                raise Refused("DeviceAlreadyAssigned", f"'pci device {name} already assigned to {dest}'")
            if mode == "manual":
                raise NoReply()
            if props.get("device_id", devid) not in (devid, "*") and devid != "*":
                raise Refused("ProtocolError", "Unrecognized identity")
            node = ET.SubElement(self.pci_devices(dom), "device", {
                "backend-domain": backend, "id": port, "mode": mode,
                "identity": props.get("device_id", devid)})
            for k, v in props.items():
                if k.startswith("_"):
                    ET.SubElement(node, "option", {"name": k[1:]}).text = v
            self.save()
            return ""
        if verb == "Unassign":
            if not found:
                raise Refused("DeviceNotAssigned", f"'pci device {name} not assigned to {dest}'")
            found[0]["parent"].remove(found[0]["node"])
            self.save()
            return ""
        if verb == "Set.assignment":
            if not found:
                raise Refused("QubesValueError", f"Device {name} not assigned to {dest}")
            found[0]["node"].set("mode", payload.decode())
            self.save()
            return ""
        if verb == "Attach":
            if dest not in self.running:
                raise Refused("QubesVMNotRunningError",
                              "VM not running, cannot attach device, do you mean `assign`?")
            self.running[dest].append({"backend": backend, "port": port, "device_id": devid,
                                       "mode": "manual", "options": {}})
            return ""
        if verb == "Detach":
            held = [a for a in self.running.get(dest, []) if a["port"] == port]
            if not held:
                raise Refused("DeviceNotAssigned", f"'pci device {port} not attached to {dest}'")
            self.running[dest].remove(held[0])
            return ""
        raise Refused("ProtocolError", f"no such method: '{method}'")


def strip(a):
    return {k: a[k] for k in ("backend", "port", "device_id", "mode", "options")}



def make_handler(state, log, internal):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            buf = b""
            while len(buf) <= MAX_REQUEST:
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                buf += chunk
            if len(buf) > MAX_REQUEST or b"\0" not in buf:
                return
            header, payload = buf.split(b"\0", 1)
            try:
                meth_arg, src, dest_type, dest = header.decode("ascii").split(" ", 3)
            except ValueError:
                return
            if (dest_type, dest) == ("keyword", "adminvm"):
                dest_type, dest = "name", "dom0"
            if dest_type != "name":
                return
            method, _, arg = meth_arg.partition("+")
            late = False
            if method.startswith("internal.") != internal:
                reply = b"2\0ProtocolError\0\0no such method\0"
            else:
                with LOCK:
                    if log:
                        with open(log, "a") as f:
                            f.write(json.dumps({"method": method, "arg": arg, "source": src, "dest": dest,
                                                "payload": payload.decode("latin-1")}) + "\n")
                    try:
                        reply = b"0\0" + state.handle(method, arg, src, dest, payload).encode()
                        late, state.late = state.late, False
                    except Refused as e:
                        reply = b"2\0" + e.name.encode() + b"\0\0" + e.message.encode() + b"\0"
                    except NoReply:
                        return
                    except Exception as e:  # noqa: BLE001 - upstream: logged, no reply
                        print(f"qubesd-standin: {method}: {type(e).__name__}: {e}", file=sys.stderr)
                        return
            if late:
                time.sleep(LATE_SECONDS)
            self.request.sendall(reply)

    return Handler


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qubes-xml", required=True)
    ap.add_argument("--admin-socket", required=True)
    ap.add_argument("--internal-socket", required=True)
    ap.add_argument("--log")
    ap.add_argument("--check-bin")
    ap.add_argument("--sysfs", help="convert R4.2 BDF port ids with this sysfs, as qubesd does")
    args = ap.parse_args()
    state = State(args.qubes_xml, args.check_bin, args.sysfs)
    servers = []
    for path, internal in ((args.admin_socket, False), (args.internal_socket, True)):
        if os.path.exists(path):
            os.unlink(path)
        srv = Server(path, make_handler(state, args.log, internal))
        servers.append(srv)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    print("qubesd-standin: ready", flush=True)
    # runs until a signal, or until the process that started it is gone
    while not stop.wait(0.2):
        if os.getppid() != parent:
            break
    for srv in servers:
        srv.server_close()
    for path in (args.admin_socket, args.internal_socket):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
