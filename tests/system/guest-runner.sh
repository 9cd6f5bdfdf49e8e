#!/bin/sh
# /dev/vdb: a tar (the host's share: run.sh, the .deb, a clone). /dev/vdc: an
# empty disk the results go to, as a tar the host unpacks after power-off.
set -u
mkdir -p /run/systemtest/results
tar -xf /dev/vdb -C /run/systemtest
cd /run/systemtest
sh ./run.sh > results/run.log 2>&1
echo "RUNNER-EXIT $?" >> results/run.log
tar -cf /dev/vdc -C /run/systemtest results
sync
echo "RUNNER-DONE"
systemctl poweroff --no-block
