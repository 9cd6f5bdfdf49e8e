"""The stat plan's sentinels on a real kernfs: polled, not read, and a
removed node seen at the next sample (facts/sampler.py, module docstring).

A recorded tree's files are regular files, which never poll POLLERR; the
sysfs of the kernel running the suite is kernfs, the filesystem
/sys/kernel/irq is on. Its IRQ descriptors cannot be freed from a test, but
any kernfs node removal goes through the same kernfs_get_active check in
kernfs_fop_poll and kernfs_seq_start (fs/kernfs/file.c). So one VF's
sentinel, its first vector's actions file, is a symlink into a sysfs
mounted in a private network namespace: the ifalias of a veth there, set
to the vector's handler text (net/core/net-sysfs.c ifalias_show prints it
as actions_show prints a handler, with a newline). `ip link del` removes
the node, as free_desc -> irq_sysfs_del removes an IRQ's. The tree then
shows the vector's number given to another device's queue, as
test_sampler_stat's text-change test does. bench/kernel_read_cost checks
the same poll behaviour on /sys/kernel/irq itself, on a 6.1 kernel.

Needs root, unshare(1) and ip(8), and a kernel with veth: the scene runs in
a child under `unshare --net --mount`, so the host's network and mounts
never see it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SKIP = 77  # the child's exit status when the kernel or tools cannot set the scene up


def child(tmp: Path) -> dict:
    """The scene, in the private namespaces: what the sampler did."""
    sys.path[:0] = [str(REPO), str(HERE)]
    from test_sampler_stat import VECTORS, Compared, bdf, irq_of, vf_tree  # noqa: PLC0415

    link = "vasentinel0"
    made = subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "vasentinel1"],
                          capture_output=True, text=True)
    if made.returncode:
        print(f"cannot make a veth in a private network namespace: {made.stderr.strip()}")
        sys.exit(SKIP)
    sysfs = tmp / "sysfs"
    sysfs.mkdir()
    subprocess.run(["mount", "-t", "sysfs", "sysfs", str(sysfs)], check=True)  # this namespace's view
    alias = sysfs / f"class/net/{link}/ifalias"
    root = tmp / "tree"
    vf_tree(root)
    sentinel = root / f"sys/kernel/irq/{irq_of(0, 0)}/actions"
    alias.write_text(sentinel.read_text())
    assert alias.read_text() == sentinel.read_text()
    sentinel.unlink()
    sentinel.symlink_to(alias)
    c = Compared(root)
    for _ in range(2):  # a rediscovery, then the loop that builds the plan
        c.sample()
    # The saving itself: at a steady sample the polled sentinel is not read,
    # the regular files' are (VF 1's, for the counter's sake).
    kept = {vf: c.sampler.action_fds[str(irq_of(vf, 0))] for vf in (0, 1)}
    reads = {fd: 0 for fd in kept.values()}
    pread = os.pread

    def counted(fd, *args):
        if fd in reads:
            reads[fd] += 1
        return pread(fd, *args)

    os.pread = counted
    try:
        for _ in range(2):
            got = c.sample()
    finally:
        os.pread = pread
    out = {"polled": c.sampler.polled_sentinels, "stat_samples": c.sampler.stat_samples,
           "before": got[bdf(0)].mode, "polled_reads": reads[kept[0]], "read_reads": reads[kept[1]]}
    shape, rediscoveries = c.sampler.shape, c.sampler.rediscoveries
    subprocess.run(["ip", "link", "del", link], check=True)  # the node goes, as at free_desc
    sentinel.unlink()
    # The numbers taken by another device's queues, in sysfs and in
    # /proc/interrupts: on a live host the sampler's other kept descriptors
    # of the device are dead too, and the sample after the rediscovery
    # takes their rows from /proc/interrupts (Sampler._read_rows).
    proc = root / "proc/interrupts"
    text = proc.read_text()
    for k in range(VECTORS):
        (root / f"sys/kernel/irq/{irq_of(0, k)}/actions").write_text(f"nvme0q{k}\n")
        text = text.replace(f"vfio-msix[{k}]({bdf(0)})", f"nvme0q{k}")
    proc.write_text(text)
    got = c.sample()
    out.update(after=got[bdf(0)].mode, other=got[bdf(1)].mode, shape_moved=c.sampler.shape != shape,
               rediscovered=c.sampler.rediscoveries - rediscoveries)
    c.sampler.close()
    return out


def test_a_removed_kernfs_sentinel_is_seen_through_one_poll(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: unshare --net --mount and a veth in the private namespace")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (util-linux, iproute2: make deps)")
    run = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", sys.executable,
                          __file__, str(tmp_path)], capture_output=True, text=True, timeout=120)
    if run.returncode == SKIP:
        pytest.skip(run.stdout.strip())
    if run.returncode and "unshare failed" in run.stderr:
        pytest.skip(f"no private namespaces here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(run.stdout.splitlines()[-1])
    # The plan polled VF 0's sentinel (kernfs) and read the others (regular files).
    assert got["polled"] == 1 and got["stat_samples"] >= 2 and got["before"] == "msix", got
    assert got["polled_reads"] == 0 and got["read_reads"] == 2, got
    assert got["after"] != "msix" and got["other"] == "msix", got
    assert got["shape_moved"] and got["rediscovered"] == 1, got


if __name__ == "__main__":
    print(json.dumps(child(Path(sys.argv[1]))))
