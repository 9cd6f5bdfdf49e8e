"""vfio-advisor: interrupt advice for VFIO PCI passthrough on libvirt/QEMU hosts."""

__version__ = "0.1.0"
