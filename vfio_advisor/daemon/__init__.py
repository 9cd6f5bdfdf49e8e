"""The advisor daemon, one module per part:

    service       the process: libvirt connection and events, the sampling
                  loop's timing, systemd notifications, reload (SIGHUP)
    watch         the Watcher: steps every followed device through the
                  runtime rules at each sample and hands the result to its
                  sinks; no file I/O and no rule ID of its own
    state         what it keeps: followed domains' facts, the state file
    gather_child  gathers a domain's facts in a short-lived child process,
                  so that the daemon never imports lxml

Importing the package imports none of them: the gathering child imports
gather_child alone.
"""

from __future__ import annotations


def main(args) -> int:
    from vfio_advisor.daemon.service import main as service_main  # noqa: PLC0415

    return service_main(args)
