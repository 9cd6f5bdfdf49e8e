"""The journald message catalog, generated from the rule registry.

Format: systemd's catalog/systemd.catalog.in and docs/CATALOG.md: a
"-- MESSAGE_ID" line, a one-line Subject, Defined-By, Documentation, a blank
line, then prose (what happened, then what to do) wrapped at 76 columns.
`@FIELD@` is replaced by journalctl -x from the entry.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

from vfio_advisor import journal_fields as F
from vfio_advisor.journal_fields import at
from vfio_advisor.rules import RULES

HEADER = """\
#  SPDX-License-Identifier: GPL-2.0-or-later
#
#  Message catalog for vfio-advisor. Generated from the rule registry by
#  `vfio-advisor catalog`; do not edit. Install to /usr/lib/systemd/catalog/
#  and run `journalctl --update-catalog`; `journalctl -x` then shows these.
"""


# journalctl -x fills @FIELD@ with the entry's field (systemd 252,
# src/libsystemd/sd-journal/sd-journal.c, sd_journal_get_catalog: replace_var()
# over the catalog text, looking each name up in the entry).
_FIELD = re.compile(r"@(VFIO_ADVISOR_[A-Z0-9_]+)@")


def for_reader(text: str, mark: Callable[[str], str] = lambda name: f"<{name}>") -> str:
    """A rule's text where no journal entry fills its @FIELD@ substitutions
    (`vfio-advisor explain`, the man page): each one becomes the name of
    what journalctl -x puts there, "<domain>" for @VFIO_ADVISOR_DOMAIN@.
    mark: how a name is shown (the man page sets it in italics)."""
    return _FIELD.sub(lambda m: mark(m.group(1).removeprefix("VFIO_ADVISOR_").lower().replace("_", " ")),
                      text)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 76, break_long_words=False, break_on_hyphens=False)


def render_catalog() -> str:
    parts = [HEADER]
    for rule in RULES:
        lines = [
            f"-- {rule.message_id}",
            f"Subject: {rule.id} {rule.title}",
            "Defined-By: vfio-advisor",
        ]
        lines += [f"Documentation: {doc}" for doc in rule.documentation]
        body = [_wrap(rule.explanation)]
        if rule.check is not None:
            where = f"Domain: {at(F.DOMAIN)}."
            if rule.scope == "device":
                where += f" Host device: {at(F.HOST_BDF)}, guest address {at(F.GUEST_ADDRESS)}."
            body.append(_wrap(where))
            body.append(f"What to do:\n{at(F.REMEDY)}")
        body.append(_wrap(f"Rule {rule.id} ({rule.slug}). "
                          f"Run `vfio-advisor explain {rule.id}` for more."))
        parts.append("\n".join(lines) + "\n\n" + "\n\n".join(body) + "\n")
    return "\n".join(parts)
