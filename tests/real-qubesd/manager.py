#!/usr/bin/env python3
"""The real Qube Settings dialog (QubesOS/qubes-manager, release4.3), headless,
as a management qube's GUI uses it, through this project's front door.

    manager.py RUNDIR MANAGER_TREE CLIENT_TREE QREXEC_CLIENT_VM

Run by check.py (check 14) with upstream qubesd serving RUNDIR. PyQt6, pyxdg
and qasync must be importable (QT_QPA_PLATFORM=offscreen is set here); the
icon tinting of qubes-linux-utils' qubesimgconverter and the Applications
tab's qvm-appmenus are stubbed. The dialog's .ui files are
compiled into RUNDIR/manager with PyQt6's own uic; its icon resources are left
out. Nothing of upstream is copied into this repository.

Each step opens VMSettingsWindow(QUBE, init_page="devices") as the GUI does,
moves devices between the Devices tab's lists as a user would, and saves with
the dialog's own save_changes(), which shows errors with QMessageBox.warning:
that is recorded instead of shown. Prints one JSON object: the steps' results.
"""
import json
import os
import shutil
import sys

RUN, TREE, CLIENT, SHIM = sys.argv[1:5]
os.environ["QT_QPA_PLATFORM"] = "offscreen"

pkg = os.path.join(RUN, "manager")
shutil.copytree(os.path.join(TREE, "qubesmanager"), os.path.join(pkg, "qubesmanager"), dirs_exist_ok=True)
from PyQt6 import uic  # noqa: E402  pylint: disable=wrong-import-position

for ui in sorted(os.listdir(os.path.join(TREE, "ui"))):
    if ui.endswith(".ui"):
        with open(os.path.join(TREE, "ui", ui), encoding="utf-8") as src, \
                open(os.path.join(pkg, "qubesmanager", "ui_" + ui[:-3] + ".py"), "w", encoding="utf-8") as out:
            uic.compileUi(src, out)
with open(os.path.join(pkg, "qubesmanager", "resources.py"), "w", encoding="utf-8"):
    pass
# qubes-linux-utils' image converter only tints icons here
with open(os.path.join(pkg, "qubesimgconverter.py"), "w", encoding="utf-8") as f:
    f.write("class Image:\n    def __init__(self, *a, **k):\n        raise NotImplementedError\n")
sys.path[:0] = [pkg, CLIENT, os.path.join(RUN, "clientsite")]

# The Applications tab runs qvm-appmenus (qubes-desktop-linux-common): a
# GUI domain has it; here it lists no applications.
bindir = os.path.join(RUN, "manager-bin")
os.makedirs(bindir, exist_ok=True)
with open(os.path.join(bindir, "qvm-appmenus"), "w", encoding="utf-8") as f:
    f.write("#!/bin/sh\nexit 0\n")
os.chmod(os.path.join(bindir, "qvm-appmenus"), 0o755)
os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

# A GUI domain has hwdata's pci.ids; this machine may not.
_open = open


def _open_ids(name, *a, **k):
    if name == "/usr/share/hwdata/pci.ids" and not os.path.exists(name):
        name = os.environ["QUBES_PCI_ADMIN_PCI_IDS"]
    return _open(name, *a, **k)


__builtins__.open = _open_ids

import qubesadmin  # noqa: E402
import qubesadmin.config  # noqa: E402
from PyQt6 import QtWidgets  # noqa: E402

qubesadmin.config.QREXEC_CLIENT_VM = SHIM
from qubesmanager import settings  # noqa: E402

WARNINGS = []


def _warning(_parent, title, text, *_args, **_kwargs):
    WARNINGS.append(f"{title} {text}")
    return QtWidgets.QMessageBox.StandardButton.Ok


QtWidgets.QMessageBox.warning = staticmethod(_warning)
QAPP = QtWidgets.QApplication(["qube-settings"])


def dialog(qube):
    app = qubesadmin.Qubes()
    return settings.VMSettingsWindow(qube, init_page="devices", qapp=QAPP, qubesapp=app)


def ports(widget):
    return [widget.item(i).dev.port_id for i in range(widget.count())]


def move(src, dst, port):
    for i in range(src.count()):
        if src.item(i).dev.port_id == port:
            dst.addItem(src.takeItem(i))
            return
    raise LookupError(f"{port} is not in the list")


def selected(qube):
    d = dialog(qube)
    return ports(d.dev_list.selected_list)


def save(dlg):
    del WARNINGS[:]
    dlg.save_changes()
    return list(WARNINGS)


def main():
    report = {}
    d = dialog("media")
    report["tab_enabled"] = d.tabWidget.isTabEnabled(d.tabs_indices["devices"])
    report["available"] = ports(d.dev_list.available_list)
    report["selected"] = ports(d.dev_list.selected_list)

    def step(name, port, into=True, strict_reset=False):
        d = dialog("media")
        if into:
            move(d.dev_list.available_list, d.dev_list.selected_list, port)
        else:
            move(d.dev_list.selected_list, d.dev_list.available_list, port)
        if strict_reset:
            d.new_strict_reset_list.append(port)
        report[name] = save(d)

    step("assign", "00_1c.0-00_00.0")
    report["after_assign"] = selected("media")
    step("unassign", "00_1c.0-00_00.0", into=False)
    report["after_unassign"] = selected("media")
    step("rule_refusal", "00_14.2")
    deny = os.path.join(RUN, "policy.d", "20-deny.policy")
    with open(deny, "w", encoding="utf-8") as f:
        f.write("admin.vm.device.pci.Assign +dom0+00_1c.0-00_00.0+_ mgmt @anyvm deny\n")
    step("policy_refusal", "00_1c.0-00_00.0")
    os.unlink(deny)
    step("option_without_grant", "00_1c.0-00_00.0", strict_reset=True)
    grant = os.path.join(RUN, "policy.d", "20-grant.policy")
    with open(grant, "w", encoding="utf-8") as f:
        f.write("admin.vm.device.pci.Option +no-strict-reset mgmt @anyvm allow target=dom0\n")
    step("option_with_grant", "00_1c.0-00_00.0", strict_reset=True)
    os.unlink(grant)
    report["after_option"] = selected("media")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
