# The qubesd extension of qubes-pci-admin.
#
# Copyright (C) 2026 qubes-pci-admin developers
# SPDX-License-Identifier: GPL-2.0-or-later

"""qubes-pci-admin's rules for calls that reach qubesd directly.

qubes-pci-admin answers management qubes' ``admin.vm.device.pci.*`` calls
and sends what passes its rules to qubesd. Calls that reach qubesd without
passing it (``qvm-pci`` and Salt in dom0, ``qvm-clone``, a restore, a
management qube where the methods were not switched over) meet the same
rules here:

* ``admin-permission:admin.vm.device.pci.{Assign,Set.assignment,Attach,Detach}``
  refuses what the rules refuse, before qubesd changes anything;
* ``domain-pre-start`` refuses a start when a required PCI device is in use
  by another running qube, or another function of the same device runs
  elsewhere without ``no-strict-reset`` on both, naming the other qube and
  the fix.

This module holds no rule of its own: it collects the facts qubesd has in
memory and asks for one JSON verdict: from the running daemon over its
socket (``QUBES_PCI_ADMIN_DAEMON_SOCKET``, default
``/run/qubes-pci-admin.sock``; the call ``qubes-pci-admin.Check+KIND`` in
qrexec's socket-service framing, the facts as its payload), and when no
daemon answers, from ``qubes-pci-admin check KIND`` (``QUBES_PCI_ADMIN_BIN``,
default ``/usr/bin/qubes-pci-admin``). A check changes nothing, so asking
the binary after the daemon failed is safe. The shapes of facts and
verdict are the ``ExtensionFacts`` and ``Verdict`` types of the
``qubes-pci-rpc`` crate (docs/extension-schema.json). Nothing here calls
back into qubesd. When neither can answer, the call is refused (fail
closed).

``admin-permission:*`` events are fired synchronously, so their handlers
run the check synchronously. ``domain-pre-start`` is fired asynchronously,
so its handler is a coroutine that asks the daemon with asyncio's streams
(or runs the binary with asyncio's subprocess) and never blocks qubesd's
event loop. The order of
``domain-pre-start`` handlers is undefined: upstream's own PCI handler may
already have bound the qube's devices to pciback when this one refuses the
start (they stay unused on pciback until a qube takes them).
"""

import asyncio
import json
import os
import socket
import subprocess

import qubes.exc
import qubes.ext
import qubes.vm.adminvm

#: how long the rule check may take before the call is refused
CHECK_TIMEOUT = 10

PCI = "admin.vm.device.pci."


#: the daemon's method for rule checks (never routed by qrexec)
CHECK_METHOD = "qubes-pci-admin.Check"

#: the largest verdict read from the daemon
MAX_VERDICT = 1 << 20


def _binary():
    return os.environ.get("QUBES_PCI_ADMIN_BIN", "/usr/bin/qubes-pci-admin")


def _daemon_socket():
    """The daemon's socket, or None when asking it is turned off."""
    path = os.environ.get(
        "QUBES_PCI_ADMIN_DAEMON_SOCKET", "/run/qubes-pci-admin.sock"
    )
    return None if path in ("", "none") else path


def _daemon_request(kind, facts):
    """The call in qrexec's socket-service framing: the header, a NUL, the
    facts."""
    header = "{}+{} dom0 keyword adminvm".format(CHECK_METHOD, kind)
    return header.encode() + b"\0" + json.dumps(facts).encode()


def _daemon_verdict(reply):
    """The verdict of a daemon reply (``0\\0`` and a JSON object), or None
    when it is not one (an error, a reply cut short): the binary is asked
    then."""
    if not reply.startswith(b"0\0"):
        return None
    try:
        if isinstance(json.loads(reply[2:].decode()), dict):
            return reply[2:]
    except ValueError:
        pass
    return None


def _ask_daemon(kind, facts):
    """The daemon's verdict, or None when no daemon answered it whole."""
    path = _daemon_socket()
    if path is None:
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CHECK_TIMEOUT)
            sock.connect(path)
            sock.sendall(_daemon_request(kind, facts))
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while len(reply) <= MAX_VERDICT:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    return _daemon_verdict(reply)


async def _ask_daemon_async(kind, facts):
    """The same, with asyncio's streams (qubesd's loop goes on)."""
    path = _daemon_socket()
    if path is None:
        return None
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path), CHECK_TIMEOUT
        )
        writer.write(_daemon_request(kind, facts))
        writer.write_eof()
        await asyncio.wait_for(writer.drain(), CHECK_TIMEOUT)
        reply = b""
        while len(reply) <= MAX_VERDICT:
            chunk = await asyncio.wait_for(reader.read(65536), CHECK_TIMEOUT)
            if not chunk:
                break
            reply += chunk
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return _daemon_verdict(reply)


def _text(value):
    """An enum (AssignmentMode) or a plain value, as text."""
    return str(getattr(value, "value", value))


def _device(device):
    """The facts of a device named by an event."""
    return {
        "backend": str(getattr(device, "backend_name", None) or device.backend_domain),
        "port": device.port_id,
        "device_id": device.device_id or "*",
    }


def _assignment(qube, assignment):
    return {
        "qube": qube.name,
        "backend": str(assignment.backend_name),
        "port": assignment.port_id,
        "device_id": assignment.device_id or "*",
        "mode": _text(assignment.mode),
        "options": {str(k): str(v) for k, v in assignment.options.items()},
    }


def _assignments(app, required_only=False):
    """Every qube's PCI assignments, as qubesd holds them."""
    out = []
    for vm in app.domains:
        devices = getattr(vm, "devices", None)
        if devices is None or "pci" not in devices:
            continue
        for a in devices["pci"].get_assigned_devices(required_only):
            out.append(_assignment(vm, a))
    return out


def _system(*vms):
    """What the policy needs to know of the qubes involved."""
    domains = {}
    for vm in vms:
        domains[vm.name] = {
            "type": vm.__class__.__name__,
            "tags": sorted(str(t) for t in vm.tags),
            "power_state": vm.get_power_state(),
            "uuid": str(getattr(vm, "uuid", "") or ""),
        }
    return domains


def _dest(dest):
    """The destination as the rules see it: its class and its virt_mode,
    with whether that is qubesd's default (pvh until the first PCI
    assignment, then hvm) or set on the qube."""
    facts = {
        "dest": dest.name,
        "dest_class": dest.__class__.__name__,
    }
    virt_mode = getattr(dest, "virt_mode", None)
    if virt_mode is not None:
        facts["dest_virt_mode"] = str(virt_mode)
        facts["dest_virt_mode_default"] = bool(
            dest.property_is_default("virt_mode")
        )
    facts["dest_devices_denied"] = str(getattr(dest, "devices_denied", "") or "")
    for prop in ("memory", "maxmem"):
        value = getattr(dest, prop, None)
        if isinstance(value, int):
            facts["dest_" + prop] = value
    return facts


def _refusal(vm, name, message):
    """The exception qubesd sends for a refusal: always a QubesException,
    so stock clients print ``Error: ...``."""
    cls = getattr(qubes.exc, str(name), None)
    if isinstance(cls, type) and issubclass(cls, qubes.exc.QubesVMError):
        try:
            return cls(vm, message)
        except TypeError:
            pass
    elif isinstance(cls, type) and issubclass(cls, qubes.exc.QubesException):
        try:
            return cls(message)
        except TypeError:
            pass
    return qubes.exc.QubesException(message)


def _failed(kind, vm, error):
    vm.log.error("qubes-pci-admin check %s failed: %s", kind, error)
    return qubes.exc.QubesException(
        "The PCI passthrough rules could not be checked, so this was "
        "refused; a dom0 administrator can find the cause in the journal"
    )


def _judge(kind, stdout, vm):
    """Raises the refusal the verdict says, or refuses when it says
    nothing clear."""
    try:
        verdict = json.loads(stdout.decode() or "{}")
    except ValueError as e:
        raise _failed(kind, vm, e)
    if not isinstance(verdict, dict):
        raise _failed(kind, vm, "the verdict is not an object")
    if verdict.get("ok") is True:
        return
    name = verdict.get("exception", "QubesException")
    message = verdict.get("message") or "refused by the PCI passthrough rules"
    vm.log.warning("qubes-pci-admin refused %s: %s", kind, message)
    raise _refusal(vm, name, message)


def check(kind, facts, vm):
    """Asks the daemon, else the binary (for events fired synchronously);
    raises the refusal the answer says, or refuses when neither answers."""
    verdict = _ask_daemon(kind, facts)
    if verdict is not None:
        _judge(kind, verdict, vm)
        return
    try:
        proc = subprocess.run(
            [_binary(), "check", kind],
            input=json.dumps(facts).encode(),
            capture_output=True,
            timeout=CHECK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise _failed(kind, vm, e)
    _judge(kind, proc.stdout, vm)


async def check_async(kind, facts, vm):
    """The same for events fired asynchronously: the daemon is asked with
    asyncio's streams, the binary runs as an asyncio subprocess, so
    qubesd's event loop goes on meanwhile."""
    verdict = await _ask_daemon_async(kind, facts)
    if verdict is not None:
        _judge(kind, verdict, vm)
        return
    try:
        proc = await asyncio.create_subprocess_exec(
            _binary(),
            "check",
            kind,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise _failed(kind, vm, e)
    try:
        stdout, _ = await asyncio.wait_for(
            proc.communicate(json.dumps(facts).encode()), CHECK_TIMEOUT
        )
    except (asyncio.TimeoutError, OSError) as e:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise _failed(kind, vm, str(e) or "timed out")
    _judge(kind, stdout, vm)


class PciAdminExtension(qubes.ext.Extension):
    """The rules of qubes-pci-admin inside qubesd."""

    # pylint: disable=unused-argument,too-many-positional-arguments

    @qubes.ext.handler("admin-permission:" + PCI + "Assign")
    def on_assign(self, vm, event, dest, arg, device, mode, options, **kwargs):
        facts = _dest(dest)
        facts.update(
            {
                "source": vm.name,
                "device": _device(device),
                "mode": _text(mode),
                "options": {str(k): str(v) for k, v in options.items()},
                "assignments": _assignments(dest.app),
                "system": _system(vm, dest),
            }
        )
        check("assign", facts, dest)

    @qubes.ext.handler("admin-permission:" + PCI + "Set.assignment")
    def on_set_assignment(self, vm, event, dest, arg, device, mode, **kwargs):
        # The assignment as stored, with the new mode: turning it into
        # required meets every rule an Assign meets.
        stored = [
            a
            for a in dest.devices["pci"].get_assigned_devices()
            if a.port_id == device.port_id
            and (device.device_id in (None, "*") or a.device_id == device.device_id)
        ]
        facts = _dest(dest)
        facts.update(
            {
                "source": vm.name,
                "device": _device(device),
                "mode": _text(mode),
                "options": {
                    str(k): "True"
                    for k, v in (stored[0].options if stored else {}).items()
                    if str(v)
                },
                "assignments": _assignments(dest.app),
                "system": _system(vm, dest),
            }
        )
        check("set-mode", facts, dest)

    @qubes.ext.handler("admin-permission:" + PCI + "Attach")
    def on_attach(self, vm, event, dest, arg, device, **kwargs):
        check("attach", _running_facts(vm, dest, device), dest)

    @qubes.ext.handler("admin-permission:" + PCI + "Detach")
    def on_detach(self, vm, event, dest, arg, device, **kwargs):
        check("detach", _running_facts(vm, dest, device), dest)

    @qubes.ext.handler("domain-pre-start")
    async def on_domain_pre_start(self, vm, event, **kwargs):
        if isinstance(vm, qubes.vm.adminvm.AdminVM):
            return
        required = [
            _assignment(vm, a)
            for a in vm.devices["pci"].get_assigned_devices(True)
        ]
        if not required:
            return
        running = []
        for other in vm.app.domains:
            if other is vm or isinstance(other, qubes.vm.adminvm.AdminVM):
                continue
            if not other.is_running():
                continue
            running.extend(_held(other))
        facts = _dest(vm)
        facts.update(
            {
                "memory_balancing": bool(getattr(vm, "maxmem", 0)),
                "assignments": required,
                "running": running,
            }
        )
        await check_async("start", facts, vm)


def _running_facts(source, dest, device):
    """Attach and Detach: whether the qube runs, and what it holds."""
    running = not dest.is_halted()
    attached = []
    if running:
        try:
            attached = [
                a.port_id for a in dest.devices["pci"].get_attached_devices()
            ]
        except Exception:  # pylint: disable=broad-except
            # libvirt unreadable: what it was started with
            attached = [
                a.port_id
                for a in dest.devices["pci"].get_assigned_devices(True)
            ]
    return {
        "source": source.name,
        "dest": dest.name,
        "dest_running": running,
        "dest_attached": attached,
        "device": _device(device),
    }


def _held(vm):
    """The PCI devices a running qube holds, with the options of its
    assignment of each (libvirt's live XML; its required assignments when
    that cannot be read)."""
    assigned = {a.port_id: a for a in vm.devices["pci"].get_assigned_devices()}
    try:
        ports = [a.port_id for a in vm.devices["pci"].get_attached_devices()]
    except Exception:  # pylint: disable=broad-except
        ports = [
            a.port_id for a in vm.devices["pci"].get_assigned_devices(True)
        ]
    out = []
    for port in ports:
        held = assigned.get(port)
        out.append(
            {
                "qube": vm.name,
                "backend": "dom0",
                "port": port,
                "device_id": (held.device_id if held else None) or "*",
                "mode": "required",
                "options": {
                    str(k): str(v) for k, v in (held.options if held else {}).items()
                },
            }
        )
    return out
