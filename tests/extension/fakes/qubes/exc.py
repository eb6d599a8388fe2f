"""Test doubles of qubes.exc: the constructors the extension relies on."""


class QubesException(Exception):
    pass


class QubesVMError(QubesException):
    def __init__(self, vm, msg):
        super().__init__(msg)
        self.vm = vm


class QubesVMNotHaltedError(QubesVMError):
    def __init__(self, vm, msg=None):
        super().__init__(vm, msg or f"Domain is not powered off: {vm.name}")


class QubesValueError(QubesException, ValueError):
    pass


class DeviceNotFound(QubesException, KeyError):
    def __str__(self):
        return QubesException.__str__(self)


class PermissionDenied(Exception):
    pass
