#!/bin/sh
# Run a command (make test: pytest) so that nothing it starts can write into
# the host's journal: in a private mount namespace, an empty tmpfs covers
# /run/systemd/journal, where journald's sockets live (socket: native
# protocol, stdout: stream logging, dev-log: syslog(3), which /dev/log points
# to). sd_journal_send() then finds no socket and vfio-advisor logs to stderr;
# tiers that read a journal start their own private journald
# (tests/support/private-journal.sh). Used by `make test` and by the system
# tier, which proves it on a host with systemd as PID 1.
#   without-host-journal.sh CMD [ARGS...]
if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
    exec unshare --mount --propagation private -- sh -c \
        '[ ! -d /run/systemd/journal ] || mount -t tmpfs -o mode=0755,size=1m vfio-advisor-tests /run/systemd/journal || exit 125
         exec "$@"' sh "$@"
fi
echo "without-host-journal: no private mount namespace here (needs root and unshare);" \
     "tests that log may reach the host's journal" >&2
exec "$@"
