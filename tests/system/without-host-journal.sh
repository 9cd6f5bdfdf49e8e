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
# Exit status: CMD's, or 125 when this script cannot keep CMD away from a
# journald that is there (not root, or no mount namespace): the tests would
# write into the host's journal, so they do not run at all.
if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true 2>/dev/null; then
    exec unshare --mount --propagation private -- sh -c \
        '[ ! -d /run/systemd/journal ] || mount -t tmpfs -o mode=0755,size=1m vfio-advisor-tests /run/systemd/journal || exit 125
         exec "$@"' sh "$@"
fi
for sock in /run/systemd/journal/socket /run/systemd/journal/stdout /run/systemd/journal/dev-log; do
    if [ -S "$sock" ]; then
        echo "without-host-journal: $sock is there and cannot be hidden (needs root and" \
             "unshare --mount): not running, since the tests would log into the host's journal" >&2
        exit 125
    fi
done
# No journald socket on this machine (a container without systemd): nothing to hide.
exec "$@"
