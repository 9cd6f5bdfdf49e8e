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


CHANNEL_ELEMENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def plan_agent_channel(root, analysis, targets, router):
    """The domain XML planner of the rule "no guest agent channel" (its
    Rule.fix names it): one <channel> appended to <devices>, re-analysed and
    verified by `vfio-advisor fix` like every XML fix. It changes no PCI
    address libvirt has assigned: the virtio-serial controller that libvirt
    adds for it takes a free slot at the next define."""
    from vfio_advisor.fix.planner import Proposal  # noqa: PLC0415 - fix runs this, never the hook
    from vfio_advisor.fix.xmledit import Op  # noqa: PLC0415

    return Proposal([Op("append-device", value=CHANNEL_ELEMENT)],
                    "add a QEMU guest agent channel (org.qemu.guest_agent.0)",
                    ["libvirt adds the virtio-serial controller and the socket path at define; "
                     "the agent is reachable after the domain's next start, once qemu-ga runs "
                     "in the guest"], [], list(targets))
