"""Internal rules (VA9xxx): raised by the engine and the hook themselves,
not by a check: an internal error, and the per-run summary."""

from __future__ import annotations

from vfio_advisor import journal_fields as F
from vfio_advisor.findings import Severity
from vfio_advisor.journal_fields import at
from vfio_advisor.rules.base import Rule, register
from vfio_advisor.rules.base import message_id as _id

RULES: tuple[Rule, ...] = register(
    Rule("VA9001", "internal-error", Severity.ERROR,
         "vfio-advisor hit an internal error",
         "A check or a sink of vfio-advisor failed unexpectedly. The other checks still "
         "ran. This is a bug in vfio-advisor, not in the domain.",
         "Report it with the message and, if possible, a snapshot "
         "(vfio-advisor snapshot -o report.tar.gz).",
         _id("00113ac7df114add87300056cd258a31"), None, scope="domain"),
    Rule("VA9002", "run-summary", Severity.INFO,
         "vfio-advisor checked a domain",
         f"vfio-advisor checked the domain {at(F.DOMAIN)} ({at(F.SOURCE)}) and "
         f"logged {at(F.FINDINGS)} findings for {at(F.DEVICES)} assigned PCI "
         "devices, one journal entry each. This entry is logged once per check, also when "
         "there is nothing to report.",
         f"Read the findings with journalctl -t {F.IDENTIFIER} {F.DOMAIN}=<name> -x.",
         _id("c77143cee7824d24965769fa0d8fa414"), None, scope="domain"),)
