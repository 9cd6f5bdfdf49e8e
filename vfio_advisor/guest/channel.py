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
    name='org.qemu.guest_agent.0'/></channel> added to <devices>; None when it
    already has one."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
    root = etree.fromstring(domain_xml.encode(), parser)
    if has_agent_channel(root):
        return None
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    indent = (devices.text or "\n    ") if len(devices) else "\n    "
    channel = etree.SubElement(devices, "channel", type="unix")
    etree.SubElement(channel, "target", type="virtio", name=AGENT_CHANNEL)
    if len(devices) > 1:
        devices[-2].tail = indent
        channel.tail = devices.text[:-2] if devices.text and devices.text.endswith("  ") else "\n  "
    return etree.tostring(root, encoding="unicode")
