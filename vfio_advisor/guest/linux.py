"""What a Linux guest says about its PCI functions, read with one guest-exec.

The inventory is one fixed POSIX sh script (INVENTORY_SCRIPT, listed verbatim
in docs/guest-commands.md). Nothing from the guest is ever put into it: it
takes no arguments and its output is parsed here, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vfio_advisor.facts.interrupts import IrqLine, parse_interrupts

SHELL = "/bin/sh"
# Tab-separated records, one letter each:
#   K release | U uptime-seconds | C cmdline
#   D bdf vendor device subsys-vendor subsys-device class irq driver module
#   M bdf irq msi|msix         (each file of msi_irqs/: its content is the kind,
#                               drivers/pci/msi/msi.c msi_mode_show, Linux 6.1)
#   P module parameter value   (/sys/module/M/parameters/*)
#   V module version           (/sys/module/M/version, out-of-tree modules)
#   O file line                ("options" lines of modprobe.d, kmod's search order)
#   I                          then /proc/interrupts verbatim
INVENTORY_SCRIPT = r"""t=$(printf '\t')
printf 'K%s%s\n' "$t" "$(uname -r)"
read -r up _ < /proc/uptime; printf 'U%s%s\n' "$t" "$up"
printf 'C%s%s\n' "$t" "$(cat /proc/cmdline)"
mods=
for d in /sys/bus/pci/devices/*; do
  [ -r "$d/vendor" ] || continue
  b=${d##*/}; drv=; mod=
  [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
  [ -e "$d/driver/module" ] && mod=$(basename "$(readlink "$d/driver/module")")
  printf 'D%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s\n' "$t" "$b" "$t" "$(cat "$d/vendor")" "$t" "$(cat "$d/device")" \
    "$t" "$(cat "$d/subsystem_vendor")" "$t" "$(cat "$d/subsystem_device")" "$t" "$(cat "$d/class")" \
    "$t" "$(cat "$d/irq")" "$t" "$drv" "$t" "$mod"
  for m in "$d"/msi_irqs/*; do [ -f "$m" ] && printf 'M%s%s%s%s%s%s\n' "$t" "$b" "$t" "${m##*/}" "$t" "$(cat "$m")"; done
  case " $mods " in *" $mod "*) ;; *) [ -n "$mod" ] && mods="$mods $mod" ;; esac
done
for mod in $mods; do
  for p in /sys/module/"$mod"/parameters/*; do
    [ -f "$p" ] && v=$(cat "$p" 2>/dev/null) && printf 'P%s%s%s%s%s%s\n' "$t" "$mod" "$t" "${p##*/}" "$t" "$v"
  done
  [ -r "/sys/module/$mod/version" ] && printf 'V%s%s%s%s\n' "$t" "$mod" "$t" "$(cat "/sys/module/$mod/version")"
done
for f in /etc/modprobe.d/*.conf /run/modprobe.d/*.conf /usr/local/lib/modprobe.d/*.conf /lib/modprobe.d/*.conf /usr/lib/modprobe.d/*.conf; do
  [ -r "$f" ] || continue
  grep -E '^[[:space:]]*options[[:space:]]' "$f" | while IFS= read -r l; do printf 'O%s%s%s%s\n' "$t" "$f" "$t" "$l"; done
done
printf 'I\n'
cat /proc/interrupts
"""
INVENTORY_ARGV = (SHELL, "-c", INVENTORY_SCRIPT)

_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_HEX = re.compile(r"^0x[0-9a-fA-F]{1,8}$")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a driver or module name as the kernel prints it


@dataclass
class GuestFunction:
    bdf: str
    vendor: int
    device: int
    subsystem_vendor: int | None
    subsystem_device: int | None
    class_code: int | None
    irq: int | None
    driver: str | None
    module: str | None
    msi: list[tuple[int, str]] = field(default_factory=list)  # (irq, "msi"|"msix")

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


@dataclass
class LinuxInventory:
    release: str | None = None
    uptime: float | None = None
    cmdline: str = ""
    functions: list[GuestFunction] = field(default_factory=list)
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    module_versions: dict[str, str] = field(default_factory=dict)
    options: list[tuple[str, str]] = field(default_factory=list)  # (file, "options m a=b")
    interrupts: tuple[IrqLine, ...] = ()
    # The script prints /proc/interrupts last, after an "I" line: without
    # that line the output was cut short and even the device list may be.
    complete: bool = False
    odd: list[str] = field(default_factory=list)  # records that were not understood

    def function(self, bdf: str) -> GuestFunction | None:
        return next((f for f in self.functions if f.bdf == bdf), None)

    def mode(self, fn: GuestFunction) -> str:
        """intx | msi | msix | none | unknown, as the guest kernel set it up."""
        if fn.msi:
            return "msix" if any(kind == "msix" for _, kind in fn.msi) else "msi"
        if not fn.driver:
            return "none"
        row = self.row(fn.irq)
        if fn.irq and row is not None and row.chip in ("IO-APIC", "XT-PIC", "IR-IO-APIC"):
            return "intx"
        if fn.irq:
            return "intx" if row is not None else "unknown"
        return "none"

    def row(self, irq: int | None) -> IrqLine | None:
        if irq is None:
            return None
        return next((line for line in self.interrupts if line.number == irq), None)

    def rows_of(self, fn: GuestFunction) -> list[IrqLine]:
        if fn.msi:
            return [r for r in (self.row(irq) for irq, _ in fn.msi) if r is not None]
        row = self.row(fn.irq)
        return [row] if row is not None and fn.driver else []

    def configured(self, module: str, parameter: str) -> list[tuple[str, str]]:
        """(source, value) for module.parameter from modprobe.d and the kernel
        command line, in the order they apply: kmod concatenates the options of
        every file sorted by name, then the command line's module.param=value,
        and the kernel keeps the last value (kernel/params.c parse_args)."""
        out = []
        for path, line in sorted(self.options, key=lambda item: item[0].rsplit("/", 1)[-1]):
            words = line.split()
            if len(words) >= 2 and words[0] == "options" and words[1].replace("-", "_") == module:
                for word in words[2:]:
                    key, sep, value = word.partition("=")
                    if sep and key == parameter:
                        out.append((path, value))
        for word in self.cmdline.split():
            key, sep, value = word.partition("=")
            if sep and key.replace("-", "_") == f"{module}.{parameter}":
                out.append(("/proc/cmdline", value))
        return out


def _hex(text: str) -> int | None:
    return int(text, 16) if _HEX.match(text) else None


def parse_inventory(text: str) -> LinuxInventory:
    """Parse INVENTORY_SCRIPT's output. Odd records are kept as notes, never raised."""
    inv = LinuxInventory()
    head, sep, interrupts = text.partition("\nI\n")
    if not sep and head.endswith("\nI"):
        head = head[:-2]
    for number, raw in enumerate(head.splitlines(), 1):
        parts = raw.split("\t")
        kind = parts[0]
        try:
            if kind == "K" and len(parts) == 2:
                inv.release = parts[1]
            elif kind == "U" and len(parts) == 2:
                inv.uptime = float(parts[1])
            elif kind == "C" and len(parts) >= 2:
                inv.cmdline = "\t".join(parts[1:])
            elif kind == "D" and len(parts) == 10 and _BDF.match(parts[1]):
                vendor, device = _hex(parts[2]), _hex(parts[3])
                if vendor is None or device is None:
                    raise ValueError("IDs")
                inv.functions.append(GuestFunction(
                    bdf=parts[1], vendor=vendor, device=device, subsystem_vendor=_hex(parts[4]),
                    subsystem_device=_hex(parts[5]), class_code=_hex(parts[6]),
                    irq=int(parts[7]) if parts[7].isdigit() else None,
                    driver=parts[8] if NAME.match(parts[8]) else None,
                    module=parts[9] if NAME.match(parts[9]) else None))
            elif kind == "M" and len(parts) == 4 and parts[2].isdigit() and parts[3] in ("msi", "msix"):
                fn = inv.function(parts[1])
                if fn is None:
                    raise ValueError("msi_irqs of an unknown function")
                fn.msi.append((int(parts[2]), parts[3]))
            elif kind == "P" and len(parts) == 4 and NAME.match(parts[1]):
                inv.parameters.setdefault(parts[1], {})[parts[2]] = parts[3]
            elif kind == "V" and len(parts) == 3 and NAME.match(parts[1]):
                inv.module_versions[parts[1]] = parts[2]
            elif kind == "O" and len(parts) >= 3:
                inv.options.append((parts[1], "\t".join(parts[2:]).strip()))
            elif raw.strip():
                raise ValueError("unknown record")
        except ValueError as exc:
            inv.odd.append(f"inventory line {number}: {exc}: {raw[:80]!r}")
    inv.interrupts = parse_interrupts(interrupts).lines if sep else ()
    inv.complete = bool(sep)
    if not sep:
        inv.odd.append("inventory: no /proc/interrupts section (output cut short?)")
    return inv
