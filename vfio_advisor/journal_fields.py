"""journald field names of vfio-advisor entries, declared once.

Used by the journal sink, the daemon's own event entries, the message catalog
(`@FIELD@` substitutions) and the VA9002 text. journald drops lower-case
field names (systemd journal-fields(7)), hence all upper case.
"""

IDENTIFIER = "vfio-advisor"  # SYSLOG_IDENTIFIER

MESSAGE = "MESSAGE"
PRIORITY = "PRIORITY"
SYSLOG_IDENTIFIER = "SYSLOG_IDENTIFIER"
MESSAGE_ID = "MESSAGE_ID"

RULE = "VFIO_ADVISOR_RULE"
SLUG = "VFIO_ADVISOR_SLUG"
SEVERITY = "VFIO_ADVISOR_SEVERITY"
SOURCE = "VFIO_ADVISOR_SOURCE"  # hook | daemon | advise
EVENT = "VFIO_ADVISOR_EVENT"  # the daemon's own events (started, reloaded, ...)
REMEDY = "VFIO_ADVISOR_REMEDY"
DOMAIN = "VFIO_ADVISOR_DOMAIN"
DOMAIN_UUID = "VFIO_ADVISOR_DOMAIN_UUID"
CHIPSET = "VFIO_ADVISOR_CHIPSET"
GUEST_OS = "VFIO_ADVISOR_GUEST_OS"
HOST_BDF = "VFIO_ADVISOR_HOST_BDF"
GUEST_ADDRESS = "VFIO_ADVISOR_GUEST_ADDRESS"
EVIDENCE_PREFIX = "VFIO_ADVISOR_EVIDENCE_"
# VA9002 run summary
FINDINGS = "VFIO_ADVISOR_FINDINGS"
ERRORS = "VFIO_ADVISOR_ERRORS"
WARNINGS = "VFIO_ADVISOR_WARNINGS"
DEVICES = "VFIO_ADVISOR_DEVICES"
RULES = "VFIO_ADVISOR_RULES"


def at(field: str) -> str:
    """The catalog's substitution of a field (journalctl -x replaces @FIELD@)."""
    return f"@{field}@"
