"""The guest commands of `vfio-advisor fix --guest`: planned from a report,
shown before anything runs, run only with --apply, read back, recorded.

Every argv is built here from constants, the KNOWN_OPTIONS table and
registry paths that passed windows.HARDWARE_ID / INSTANCE; the only data
that flows into the guest otherwise is the modprobe.d file's text, sent on
stdin of a fixed command."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from vfio_advisor.guest import windows
from vfio_advisor.guest.agent import GuestAgent, GuestAgentError
from vfio_advisor.guest.inspect import DeviceReport, GuestReport
from vfio_advisor.guest.options import KNOWN_OPTIONS

MODPROBE_FILE = "/etc/modprobe.d/vfio-advisor-msi.conf"
# Fixed: the file's text comes on stdin; written beside and renamed, so a
# failed write never leaves half a file that modprobe would read.
WRITE_MODPROBE_ARGV = ("/bin/sh", "-c", "umask 022 && mkdir -p /etc/modprobe.d && "
                       f"cat > {MODPROBE_FILE}.new && mv -f {MODPROBE_FILE}.new {MODPROBE_FILE} && sync")
READ_MODPROBE_ARGV = ("/bin/cat", MODPROBE_FILE)
FIXABLE = ("msi-possible-but-off", "reset-since-change")
INITRAMFS_NOTE = ("if the module is loaded from the initramfs (early KMS for amdgpu/radeon/nvidia, "
                  "or an initramfs that holds it), rebuild it in the guest so the option is seen "
                  "there too: update-initramfs -u (Debian, Ubuntu) or dracut -f (Fedora, RHEL)")
RESTART_NOTE = "the guest must restart for the change to take effect (nothing restarts it unless --reboot)"


@dataclass
class Step:
    purpose: str
    argv: tuple[str, ...]
    stdin: bytes | None = None
    readback: tuple[str, ...] | None = None
    expect: str | None = None  # what the readback output must contain
    devices: list[DeviceReport] = field(default_factory=list)

    def shown(self) -> str:
        text = " ".join(shlex.quote(a) for a in self.argv)
        if self.stdin is not None:
            text += " <<'EOF'\n" + self.stdin.decode() + "EOF"
        return text


@dataclass
class GuestPlan:
    domain: str
    os: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unfixable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"domain": self.domain, "os": self.os, "notes": self.notes, "unfixable": self.unfixable,
                "steps": [{"purpose": s.purpose, "argv": list(s.argv),
                           "stdin": s.stdin.decode() if s.stdin is not None else None,
                           "readback": list(s.readback) if s.readback else None} for s in self.steps]}


def plan_for(report: GuestReport, now: float | None = None) -> GuestPlan:
    plan = GuestPlan(report.domain, report.os)
    if report.os == "windows":
        _plan_windows(report, plan)
    else:
        _plan_linux(report, plan, time.time() if now is None else now)
    return plan


def _plan_linux(report: GuestReport, plan: GuestPlan, now: float) -> None:
    inv = report.linux
    wanted: dict[str, list[DeviceReport]] = {}
    for dev in report.devices:
        if dev.verdict.name not in FIXABLE:
            continue
        option = KNOWN_OPTIONS.get(dev.module or "")
        if option is None:
            plan.unfixable.append(f"{dev.target.ids} ({dev.guest_driver or 'no driver'}): no known "
                                  "module option switches this driver to MSI")
            continue
        wanted.setdefault(option.module, []).append(dev)
    if not wanted:
        return
    # Keep what an earlier run put in our file for other modules.
    kept = [line for path, line in (inv.options if inv else ()) if path == MODPROBE_FILE
            and line.split()[1:2] and line.split()[1] not in wanted]
    stamp = time.strftime("%Y-%m-%d", time.gmtime(now))
    lines = [f"# Written by vfio-advisor fix --guest ({stamp}): MSI for assigned devices.",
             "# Sources of the options: docs/guest-commands.md."]
    lines += kept
    for module in sorted(wanted):
        option = KNOWN_OPTIONS[module]
        lines.append(f"options {option.module} {option.parameter}={option.on}")
        # kmod applies files sorted by name, then the command line; the last
        # value wins (kernel/params.c), so a later file or the cmdline undoes ours.
        if inv is not None:
            for source, value in inv.configured(option.module, option.parameter):
                if source == MODPROBE_FILE:
                    continue
                if source == "/proc/cmdline" or source.rsplit("/", 1)[-1] > MODPROBE_FILE.rsplit("/", 1)[-1]:
                    plan.notes.append(f"{source} sets {option.module}.{option.parameter}={value} and wins "
                                      f"over {MODPROBE_FILE}: remove it there")
                elif value in option.off:
                    plan.notes.append(f"{source} sets {option.parameter}={value}; {MODPROBE_FILE} sorts "
                                      "after it and wins")
    content = ("\n".join(lines) + "\n").encode()
    plan.steps.append(Step(f"write {MODPROBE_FILE}", WRITE_MODPROBE_ARGV, content, READ_MODPROBE_ARGV,
                           content.decode(), [d for devs in wanted.values() for d in devs]))
    plan.notes.append(INITRAMFS_NOTE)
    plan.notes.append(RESTART_NOTE)


def _plan_windows(report: GuestReport, plan: GuestPlan) -> None:
    # Every function of a card: NVIDIA's installer resets the GPU and its HDMI
    # audio together, and both must be on MSI for the card to leave INTx.
    cards = {d.target.card for d in report.devices if d.verdict.name in FIXABLE and d.target.card}
    chosen = [d for d in report.devices if d.verdict.name in FIXABLE
              or (d.target.card in cards and d.setting != "on")]
    for dev in chosen:
        for inst in dev.instances:
            if inst.msi_supported == 1:
                continue
            plan.steps.append(Step(f"MSISupported=1 for {inst.hardware_id}\\{inst.instance}",
                                   windows.set_msi_argv(inst.hardware_id, inst.instance), None,
                                   windows.read_msi_argv(inst.hardware_id, inst.instance), "0x1", [dev]))
    if plan.steps:
        plan.notes.append("MessageNumberLimit is left as it is")
        plan.notes.append(RESTART_NOTE)
        plan.notes.append("a driver update resets MSISupported: run `vfio-advisor guest` after one")


def apply(agent: GuestAgent, plan: GuestPlan, report: GuestReport, say) -> list[dict]:
    """Run each step, read it back, and return the change records.
    A step whose readback already shows the result is not run again."""
    entries = []
    for step in plan.steps:
        assert step.readback is not None and step.expect is not None
        before = _try_read(agent, step.readback)
        if before is not None and _holds(before, step):
            say(f"already in place: {step.purpose}")
            continue
        say(f"running in the guest: {step.shown()}")
        agent.run(step.argv, step.stdin)
        after = agent.run(step.readback).decode("utf-8", "replace")
        if not _holds(after, step):
            raise GuestAgentError("exit-status", f"{agent.label}: read back after '{step.purpose}' does "
                                  "not show the change", commands=[step.argv])
        say(f"read back: {step.purpose}: done")
        for dev in step.devices:
            entries.append({"key": dev.target.key, "host_bdf": dev.target.host_bdf, "ids": dev.target.ids,
                            "os": report.os, "driver": dev.guest_driver,
                            "driver_version": dev.guest_driver_version, "before": dev.guest_setting,
                            "target": step.purpose, "argv": list(step.argv)})
    return entries


def _try_read(agent: GuestAgent, argv: tuple[str, ...]) -> str | None:
    try:
        return agent.run(argv).decode("utf-8", "replace")
    except GuestAgentError as exc:
        if exc.kind == "exit-status":  # the file or value does not exist yet
            return None
        raise


def _holds(text: str, step: Step) -> bool:
    if step.stdin is not None:
        return text == step.expect
    values = windows.parse_query(text)
    return any(windows.dword(v.get("MSISupported")) == 1 for v in values.values())


def guest_planner():
    """The planner that the rules with a guest fix name (Rule.fix, kind GUEST,
    rules/remedies.py), looked up here when `fix --guest` runs, as fix/
    looks up the domain XML planners: the rule says which function plans
    its fix, this module holds it."""
    from vfio_advisor.rules import RULES  # noqa: PLC0415
    from vfio_advisor.rules.remedies import GUEST  # noqa: PLC0415

    names = {r.fix.planner for r in RULES if r.fix is not None and r.fix.kind == GUEST}
    planners = [globals().get(name) for name in sorted(names)]
    if len(planners) != 1 or not callable(planners[0]):
        raise ValueError(f"programming error: the guest fixes name {sorted(names)}, not one "
                         "planner of vfio_advisor/guest/plan.py")
    return planners[0]
