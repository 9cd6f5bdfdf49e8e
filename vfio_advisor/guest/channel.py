"""The domain XML change that gives a domain a guest agent channel.

A planner over the domain XML: the fix of the "no agent channel" case. libvirt
(9.0, src/qemu/qemu_domain.c qemuDomainDeviceDefPostParse) adds the
virtio-serial controller and fills in the socket path itself, so the channel
element is all a user adds. The agent can then be reached after the next
start (or a hotplug of the channel)."""

from __future__ import annotations

from lxml import etree

from vfio_advisor.guest.agent import AGENT_CHANNEL


def has_agent_channel(root: etree._Element) -> bool:
    return bool(root.xpath("devices/channel/target[@type='virtio' and @name=$n]", n=AGENT_CHANNEL))


def channel_state(root: etree._Element) -> str | None:
    """'connected' / 'disconnected' as the live XML reports the agent's port
    (libvirt tracks VSERPORT_CHANGE events for it), or None."""
    states = root.xpath("devices/channel/target[@type='virtio' and @name=$n]/@state", n=AGENT_CHANNEL)
    return str(states[0]) if states else None


def add_agent_channel(domain_xml: str) -> str | None:
    """The domain XML with <channel type='unix'><target type='virtio'
    name='org.qemu.guest_agent.0'/></channel> added as the last device; None
    when it already has one. The text is edited in place (before the one
    </devices>), so the diff shows only the added lines and libvirt's own
    quoting and order stay as they were."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(domain_xml.encode(), parser)
    if has_agent_channel(root):
        return None
    if domain_xml.count("</devices>") != 1:
        if root.find("devices") is not None or "<devices/>" in domain_xml:
            return None  # <devices/> or an odd layout: leave it to the user
        end = domain_xml.rindex("</domain>")
        return (domain_xml[:end] + "  <devices>\n" + _CHANNEL.format(indent="    ")
                + "  </devices>\n" + domain_xml[end:])
    end = domain_xml.index("</devices>")
    line_start = domain_xml.rfind("\n", 0, end) + 1
    outer = domain_xml[line_start:end]
    indent = (outer if outer.strip() == "" else "  ") + "  "
    return domain_xml[:line_start] + _CHANNEL.format(indent=indent) + domain_xml[line_start:]


_CHANNEL = ("{indent}<channel type='unix'>\n{indent}  <target type='virtio' name='org.qemu.guest_agent.0'/>\n"
            "{indent}</channel>\n")
