"""gVMkit: QEMU VMs with the project's own image format (``specs.gvmi``), guest
assets (``assets``: kernel and initramfs, the init in ``init.sh``) and driver."""

from runtimes.vm.driver import VmRuntime

__all__ = ["VmRuntime"]
