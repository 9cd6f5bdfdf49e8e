"""Device names from the system's pci.ids (Debian's hwdata / pciutils).

Only the two lines we need are looked up, with str.find over the file, so
the hook does not pay for parsing 40,000 entries.
"""

from __future__ import annotations

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot

PCI_IDS_PATHS = ("usr/share/hwdata/pci.ids", "usr/share/misc/pci.ids")


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
        vendor_name = text[start + 7: line_end].strip()
        # The vendor's block ends at the next line that starts without a tab.
        end = line_end
        while True:
            nxt = text.find("\n", end + 1)
            if nxt < 0 or end + 1 >= len(text) or text[end + 1] not in "\t#":
                break
            end = nxt
        at = text.find(f"\n\t{device:04x}  ", line_end, end + 1)
        if at < 0:
            return vendor_name, None
        return vendor_name, text[at + 8: text.find("\n", at + 1)].strip()
