"""Into the guest: read and change a guest's interrupt setting through the
QEMU guest agent (CLI only: the hook never calls libvirt, and the daemon keeps
its read-only connection).

agent    the bounded QGA client (libvirt or a unix socket)
linux    the one inventory script and its parser
windows  reg.exe command lines and their parser
options  the Linux module options that switch MSI, with sources
verdict  the verdict for one function (pure)
changes  what --apply changed, in the state directory (the daemon's guest-change rules
         confirm it from the host after the guest's restart)
channel  the domain XML fix for a domain without an agent channel
inspect  reading a guest and matching the assigned functions
plan     the guest commands of `fix --guest`
command  `vfio-advisor guest` and `fix --guest`
"""
