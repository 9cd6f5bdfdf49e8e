"""Device names from the system's pci.ids (Debian's hwdata / pciutils).

Only the two lines we need are looked up, with str.find over the file, so
the hook does not pay for parsing 40,000 entries.
"""

from __future__ import annotations

import re

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot

PCI_IDS_PATHS = ("usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids")
_NEXT_TOP_LEVEL = re.compile(r"\n[0-9a-fA-FC]")  # a vendor line, or the class section


class PciIds:
    def __init__(self, text: str | None):
        self._text = text or ""

    @classmethod
    def load(cls, *roots: HostRoot) -> PciIds:
        """The first pci.ids found under any of `roots` (a recorded tree, then /)."""
        for root in roots:
            for rel in PCI_IDS_PATHS:
                try:
                    return cls(root.read_text(rel, 16 << 20))
                except FactUnavailable:
                    continue
        return cls(None)

    def lookup(self, vendor: int, device: int) -> tuple[str | None, str | None]:
        text = self._text
        if not text:
            return None, None
        start = text.find(f"\n{vendor:04x}  ")
        if start < 0:
            return None, None
        line_end = text.find("\n", start + 1)
        if line_end < 0:
            line_end = len(text)
        vendor_name = text[start + 7: line_end].strip()
        # The vendor's block ends at the next line that starts without a tab.
        m = _NEXT_TOP_LEVEL.search(text, line_end)
        end = m.start() if m else len(text)
        at = text.find(f"\n\t{device:04x}  ", line_end - 1, end)
        if at < 0:
            return vendor_name, None
        stop = text.find("\n", at + 1)
        return vendor_name, text[at + 8: len(text) if stop < 0 else stop].strip()
