#!/bin/bash
# Run a command next to a real, private systemd-journald, leaving the host's
# journal untouched (recipe: ../shared/docs/platform-notes.md, "journald").
#
#   private-journal.sh WORKDIR [CATALOG_DB_DIR] -- CMD [ARGS...]
#
# In a private mount namespace: tmpfs over /run/systemd and /run/log, WORKDIR
# dirs bound over /var/log and /var/lib/systemd, a private journald.conf;
# systemd-journald started; CMD run (stdin passed through); then the entries
# are written out, since the journal files vanish with the namespace:
#   WORKDIR/rc              CMD's exit status
#   WORKDIR/entries.json    journalctl -o json -t vfio-advisor (one object per line)
#   WORKDIR/explained.txt   journalctl -x -t vfio-advisor (catalog text included)
set -euo pipefail
work=$(realpath "$1"); shift
catalog=""
if [ "${1:-}" != "--" ]; then catalog=$(realpath "$1"); shift; fi
[ "${1:-}" = "--" ] && shift

mkdir -p "$work/varlog/journal" "$work/varlib/catalog"
if [ -n "$catalog" ] && [ -f "$catalog/database" ]; then
    cp "$catalog/database" "$work/varlib/catalog/database"
fi
cat > "$work/journald.conf" <<'CONF'
[Journal]
Storage=persistent
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
CONF

exec 3<&0
exec unshare --mount --propagation private -- /bin/bash -s "$work" "$@" <<'INNER'
set -uo pipefail
work=$1; shift
mkdir -p /run/systemd /run/log
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
mount --bind "$work/varlog" /var/log
mkdir -p /var/lib/systemd
mount --bind "$work/varlib" /var/lib/systemd
mount --bind "$work/journald.conf" /etc/systemd/journald.conf
# Never pass arguments to systemd-journald: the first one names a namespace.
/lib/systemd/systemd-journald </dev/null >"$work/journald.log" 2>&1 &
jpid=$!
for _ in $(seq 1 200); do
    [ -S /run/systemd/journal/socket ] && break
    sleep 0.02
done
journalctl --flush >/dev/null 2>&1 || true
"$@" <&3
echo $? > "$work/rc"
# Writes are asynchronous: --sync returns once journald has written every
# message queued before it.
timeout 10 journalctl --sync >/dev/null 2>&1 || sleep 1
journalctl -q -o json -t vfio-advisor > "$work/entries.json" 2>/dev/null
journalctl -q -x --no-pager -t vfio-advisor > "$work/explained.txt" 2>/dev/null
kill "$jpid" 2>/dev/null; wait "$jpid" 2>/dev/null
exit 0
INNER
