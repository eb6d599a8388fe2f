#!/usr/bin/env python3
"""The qubesd extension with test doubles of qubesd's objects and the real
qubes-pci-admin binary (QUBES_PCI_ADMIN_BIN, with a fake sysfs): the facts
it collects, the refusals it raises, and that it fails closed."""
import asyncio
import json
import os
import contextlib
import socket
import sys
import tempfile
import threading
import unittest

import qubes.exc
import qubes_pci_admin_ext as ext


class Log:
    def __init__(self):
        self.lines = []

    def error(self, *a):
        self.lines.append(("error",) + a)

    def warning(self, *a):
        self.lines.append(("warning",) + a)


class Mode:
    def __init__(self, value):
        self.value = value


class Assignment:
    def __init__(self, port, device_id="*", mode="required", options=None):
        self.backend_name = "dom0"
        self.port_id = port
        self.device_id = device_id
        self.mode = Mode(mode)
        self.options = options or {}


class Collection:
    def __init__(self, assigned, attached=None):
        self.assigned = assigned
        self.attached = attached

    def get_assigned_devices(self, required_only=False):
        return [a for a in self.assigned if not required_only or a.mode.value == "required"]

    def get_attached_devices(self):
        if self.attached is None:
            raise RuntimeError("no libvirt here")
        return self.attached


class App:
    def __init__(self):
        self.domains = []


class VM:
    def __init__(self, app, name, assigned=(), running=False, virt_mode="hvm", maxmem=0,
                 virt_mode_default=False):
        self.app = app
        self.name = name
        self.tags = set()
        self.virt_mode = virt_mode
        self.virt_mode_default = virt_mode_default
        self.maxmem = maxmem
        self.devices = {"pci": Collection(list(assigned))}
        self.running = running
        self.log = Log()
        self.uuid = ""
        app.domains.append(self)

    def is_running(self):
        return self.running

    def property_is_default(self, prop):
        assert prop == "virt_mode"
        return self.virt_mode_default

    def is_halted(self):
        return not self.running

    def get_power_state(self):
        return "Running" if self.running else "Halted"


class Device:
    def __init__(self, port, device_id="*"):
        self.backend_domain = "dom0"
        self.backend_name = "dom0"
        self.port_id = port
        self.device_id = device_id


class AppVM(VM):
    pass


class ExtensionTest(unittest.TestCase):
    def setUp(self):
        self.app = App()
        self.dom0 = AppVM(self.app, "dom0", running=True)
        self.work = AppVM(self.app, "work")
        self.usb = AppVM(self.app, "sys-usb")
        self.e = ext.PciAdminExtension()

    def assign(self, dest, port, mode="required", options=None, source=None):
        self.e.on_assign(source or self.dom0, "admin-permission:admin.vm.device.pci.Assign",
                         dest=dest, arg="", device=Device(port), mode=Mode(mode), options=options or {})

    def start(self, vm):
        asyncio.run(self.e.on_domain_pre_start(vm, "domain-pre-start"))

    def test_hooks_the_events_it_names(self):
        self.assertEqual(ext.PciAdminExtension.on_assign.ha_events,
                         ("admin-permission:admin.vm.device.pci.Assign",))
        self.assertEqual(ext.PciAdminExtension.on_domain_pre_start.ha_events, ("domain-pre-start",))

    def test_the_start_check_is_a_coroutine_that_lets_the_loop_run(self):
        # domain-pre-start is fired with fire_event_async: the handler must
        # not block qubesd's event loop while the binary runs.
        self.assertTrue(asyncio.iscoroutinefunction(ext.PciAdminExtension.on_domain_pre_start))
        self.work.devices["pci"].assigned.append(Assignment("00_14.0"))
        ticks = []

        async def both():
            async def ticker():
                for _ in range(1000):
                    ticks.append(1)
                    await asyncio.sleep(0)
            t = asyncio.ensure_future(ticker())
            await self.e.on_domain_pre_start(self.work, "domain-pre-start")
            t.cancel()
        asyncio.run(both())
        self.assertGreater(len(ticks), 1, "the loop ran while the check ran")

    def test_a_default_pvh_is_no_refusal_an_explicit_one_is(self):
        fresh = AppVM(self.app, "fresh", virt_mode="pvh", virt_mode_default=True)
        self.assign(fresh, "00_1f.6")
        explicit = AppVM(self.app, "explicit", virt_mode="pvh", virt_mode_default=False)
        with self.assertRaises(qubes.exc.QubesException) as cm:
            self.assign(explicit, "00_1f.6")
        self.assertIn("pvh", str(cm.exception))

    def test_an_option_value_other_than_true_is_refused(self):
        for value in ("False", "0", "no", ""):
            with self.assertRaises(qubes.exc.QubesValueError) as cm:
                self.assign(self.work, "00_14.0", options={"permissive": value})
            self.assertIn("leave the option out", str(cm.exception))
        self.assign(self.work, "00_14.0", options={"permissive": "True"})

    def test_set_assignment_to_required_meets_the_assign_rules(self):
        # a record made before the service was installed: a bridge, auto-attach
        self.usb.devices["pci"].assigned.append(Assignment("00_1c.0", mode="auto-attach"))
        with self.assertRaises(qubes.exc.QubesValueError) as cm:
            self.e.on_set_assignment(self.dom0, "ev", dest=self.usb, arg="",
                                     device=Device("00_1c.0"), mode=Mode("required"))
        self.assertIn("bridge", str(cm.exception))
        self.usb.devices["pci"].assigned.append(Assignment("00_1f.6", mode="auto-attach"))
        self.e.on_set_assignment(self.dom0, "ev", dest=self.usb, arg="",
                                 device=Device("00_1f.6"), mode=Mode("required"))

    def test_assign_allowed_and_refused_with_qubes_exceptions(self):
        self.assign(self.work, "00_14.0")
        self.work.devices["pci"].assigned.append(Assignment("00_14.0"))
        with self.assertRaises(qubes.exc.QubesValueError) as cm:
            self.assign(self.usb, "00_14.2")
        self.assertIn("no-strict-reset", str(cm.exception))
        with self.assertRaises(qubes.exc.QubesValueError):
            self.assign(self.usb, "00_1c.0")  # a bridge
        with self.assertRaises(qubes.exc.DeviceNotFound):
            self.assign(self.usb, "00_15.0")
        with self.assertRaises(qubes.exc.QubesValueError):
            self.assign(self.usb, "00_1f.6", mode="auto-attach")
        self.usb.virt_mode = "pvh"
        with self.assertRaises(qubes.exc.QubesException):
            self.assign(self.usb, "00_1f.6")

    def test_options_from_a_qube_need_a_grant_dom0_needs_none(self):
        self.assign(self.work, "00_14.0", options={"permissive": "True"})
        mgmt = AppVM(self.app, "mgmt", running=True)
        with self.assertRaises(qubes.exc.QubesException) as cm:
            self.assign(self.work, "00_14.0", options={"permissive": "True"}, source=mgmt)
        self.assertIn("admin.vm.device.pci.Option+permissive", str(cm.exception))

    def test_start_refused_while_another_running_qube_holds_the_device(self):
        self.work.devices["pci"].assigned.append(Assignment("00_14.0"))
        self.usb.devices["pci"].assigned.append(Assignment("00_14.0"))
        self.start(self.work)  # nobody holds it
        self.usb.running = True  # libvirt unreadable: its required assignments count
        with self.assertRaises(qubes.exc.QubesException) as cm:
            self.start(self.work)
        self.assertIn("in use by sys-usb", str(cm.exception))
        self.usb.devices["pci"].attached = []  # libvirt says it holds nothing
        self.start(self.work)

    def test_running_qube_no_hotplug_no_detach(self):
        self.work.running = True
        self.work.devices["pci"].attached = [Assignment("00_14.0")]
        for handler in (self.e.on_attach, self.e.on_detach):
            with self.assertRaises(qubes.exc.QubesVMNotHaltedError):
                handler(self.dom0, "ev", dest=self.work, arg="", device=Device("00_14.0"))
        self.work.running = False
        self.e.on_attach(self.dom0, "ev", dest=self.work, arg="", device=Device("00_14.0"))

    def test_fails_closed_when_neither_daemon_nor_binary_can_answer(self):
        with environ(QUBES_PCI_ADMIN_BIN="/nonexistent/qubes-pci-admin",
                     QUBES_PCI_ADMIN_DAEMON_SOCKET="/nonexistent/daemon.sock"):
            with self.assertRaises(qubes.exc.QubesException) as cm:
                self.assign(self.work, "00_14.0")
            self.assertIn("refused", str(cm.exception))
            self.assertNotIn("/nonexistent", str(cm.exception), "no dom0 path in the refusal")
            self.assertEqual(self.work.log.lines[0][0], "error")

    def test_the_start_check_fails_closed_too(self):
        self.work.devices["pci"].assigned.append(Assignment("00_14.0"))
        with environ(QUBES_PCI_ADMIN_BIN="/nonexistent/qubes-pci-admin",
                     QUBES_PCI_ADMIN_DAEMON_SOCKET="/nonexistent/daemon.sock"):
            with self.assertRaises(qubes.exc.QubesException) as cm:
                self.start(self.work)
            self.assertIn("refused", str(cm.exception))

    def test_a_daemon_reply_that_is_no_verdict_sends_the_check_to_the_binary(self):
        # A daemon that answers with an error, or a verdict cut short, is
        # not believed: the binary decides, for both kinds of events.
        for reply in (b"2\0QubesException\0\0no\0", b'0\0{"ok": tr'):
            with fake_daemon(reply) as path, environ(QUBES_PCI_ADMIN_DAEMON_SOCKET=path,
                                                     FALLBACK_EXPECTED="expected"):
                self.assign(self.work, "00_14.0")
                with self.assertRaises(qubes.exc.QubesValueError):
                    self.assign(self.usb, "00_1c.0")  # a bridge
                self.work.devices["pci"].assigned = [Assignment("00_14.0")]
                self.start(self.work)
                self.work.devices["pci"].assigned = []

    def test_a_daemon_verdict_is_what_decides_when_one_answers(self):
        # A daemon that refuses everything: its verdict is raised as is, and
        # the binary is not asked (it would allow this).
        refusal = b'0\0{"ok": false, "exception": "QubesException", "message": "the daemon says no"}'
        with fake_daemon(refusal) as path, environ(QUBES_PCI_ADMIN_DAEMON_SOCKET=path):
            for call in (lambda: self.assign(self.work, "00_14.0"),
                         lambda: self.start_with(self.work, "00_14.0")):
                with self.assertRaises(qubes.exc.QubesException) as cm:
                    call()
                self.assertIn("the daemon says no", str(cm.exception))

    def start_with(self, vm, port):
        vm.devices["pci"].assigned = [Assignment(port)]
        try:
            self.start(vm)
        finally:
            vm.devices["pci"].assigned = []


@contextlib.contextmanager
def environ(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def fake_daemon(reply):
    """A socket that reads each call whole and answers `reply`."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "daemon.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
                conn.sendall(reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        t.join()
        server.close()
        os.unlink(path)
        os.rmdir(d)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    print(f"{result.testsRun - len(result.failures) - len(result.errors)} passed, "
          f"{len(result.failures) + len(result.errors)} failed")
    sys.exit(0 if result.wasSuccessful() else 1)
