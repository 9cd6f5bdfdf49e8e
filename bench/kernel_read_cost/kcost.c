/*
 * kcost: the guest's /init for bench/kernel_read_cost/run.py. Measures what
 * the kernel spends on each read the daemon's interrupt sampler could make,
 * checks that /proc/stat's intr line agrees with the per_cpu_count files, and
 * powers the guest off. Results go to the console as "KCOST key=value" lines.
 *
 * Built static: the initramfs holds this file as /init and nothing else (no
 * shell, no libc), so what runs beside the measurement is only the kernel.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Loaded in this order (each module's depends= comes before it): virtio_pci
 * binds QEMU's virtio-rng-pci and virtio-serial-pci, whose drivers
 * (drivers/virtio/virtio_pci_common.c vp_find_vqs_msix) allocate one MSI-X
 * vector per virtqueue plus one for config changes, so the guest has MSI-X
 * IRQs as a VFIO host's vfio-msix vectors are: PCI-MSI domain, handle_edge_irq,
 * their own /sys/kernel/irq/<N>/ directories. */
static const char *modules[] = {"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                                "virtio_pci", "virtio_console", "virtio-rng"};

#define ROUNDS 7
#define BIG (1 << 20)

static char *big;

static double now(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One figure: ROUNDS rounds of n operations; the median round's µs per
 * operation, by the wall clock and by this thread's CPU clock (under TCG the
 * two differ when QEMU's vCPU thread is descheduled on the host). */
struct figure { double wall, cpu, wall_min, wall_max; };

enum op { OP_NULL, OP_PREAD, OP_READ_ALL, OP_POLL };

/* OP_POLL's set: kept actions fds as the daemon's sentinels would be, polled
 * with a zero timeout; poll_ready_max is the most any one call returned. */
static struct pollfd *pfds;
static int poll_ready_max;

static ssize_t do_op(enum op op, int fd, size_t len)
{
    switch (op) {
    case OP_NULL:
        /* getppid: a syscall that does no work; glibc caches nothing for it
         * (it does not for getpid either since 2.25, but be sure). */
        return syscall(SYS_getppid);
    case OP_PREAD:
        /* A kept fd read at offset 0. For sysfs (fs/kernfs/file.c
         * kernfs_fop_read_iter -> seq_read_iter) and for /proc/stat
         * (fs/seq_file.c seq_read_iter) a read at offset 0 resets the
         * iterator, so every pread runs the show function again: the cost
         * measured is the kernel formatting the whole file. */
        return pread(fd, big, len, 0);
    case OP_READ_ALL: {
        /* /proc/interrupts as a reader that opens, reads to EOF and closes
         * would: its seq_file (fs/proc/interrupts.c) walks every IRQ. */
        ssize_t got, total = 0;
        if (lseek(fd, 0, SEEK_SET) < 0) return -1;
        while ((got = read(fd, big, len)) > 0) total += got;
        return got < 0 ? -1 : total;
    }
    case OP_POLL: {
        /* One poll over len kept fds instead of one pread each: fs/select.c
         * do_pollfd calls each file's poll, for sysfs fs/kernfs/file.c
         * kernfs_fop_poll (kernfs_get_active, then kernfs_generic_poll:
         * compare of->event with the node's event); nothing is formatted.
         * Zero timeout: the sampler only asks whether a sentinel died. */
        int got = poll(pfds, len, 0);
        if (got > poll_ready_max) poll_ready_max = got;
        return got;
    }
    }
    return -1;
}

static struct figure measure(enum op op, int fd, size_t len, int n)
{
    double wall[ROUNDS], cpu[ROUNDS];
    struct figure f;
    for (int i = 0; i < 20; i++) do_op(op, fd, len); /* warm caches, TCG's translation */
    for (int r = 0; r < ROUNDS; r++) {
        double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
        for (int i = 0; i < n; i++)
            if (do_op(op, fd, len) < 0) { printf("KCOST error op=%d errno=%d\n", op, errno); break; }
        cpu[r] = (now(CLOCK_THREAD_CPUTIME_ID) - c0) / n;
        wall[r] = (now(CLOCK_MONOTONIC) - w0) / n;
    }
    qsort(wall, ROUNDS, sizeof wall[0], cmp_double);
    qsort(cpu, ROUNDS, sizeof cpu[0], cmp_double);
    f.wall = wall[ROUNDS / 2];
    f.cpu = cpu[ROUNDS / 2];
    f.wall_min = wall[0];
    f.wall_max = wall[ROUNDS - 1];
    return f;
}

static void report(const char *name, struct figure f, int n)
{
    printf("KCOST %s_us=%.3f %s_cpu_us=%.3f %s_min_us=%.3f %s_max_us=%.3f %s_n=%d\n",
           name, f.wall, name, f.cpu, name, f.wall_min, name, f.wall_max, name, n);
}

static ssize_t slurp(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t got, total = 0;
    while (total < (ssize_t)len - 1 && (got = read(fd, buf + total, len - 1 - total)) > 0)
        total += got;
    close(fd);
    buf[total] = 0;
    return total;
}

static int cmp_int(const int *a, const int *b) { return (*a > *b) - (*a < *b); }

/* The IRQs that have a /sys/kernel/irq/<N>/ directory (kernel/irq/irqdesc.c
 * irq_sysfs_add: every allocated descriptor once sysfs is up). */
static int irqs[8192], nirqs;
static int sysfs_irqs(void)
{
    DIR *d = opendir("/sys/kernel/irq");
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)) && nirqs < 8192)
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9') irqs[nirqs++] = atoi(e->d_name);
    closedir(d);
    qsort(irqs, nirqs, sizeof irqs[0], (int (*)(const void *, const void *))cmp_int);
    return nirqs;
}

/* Sum of a per_cpu_count read through a kept fd: kernel/irq/irqdesc.c
 * per_cpu_count_show prints "%u" per possible CPU, comma separated, with a
 * newline at the end; *fields gets how many. -1 when the text is cut (no
 * newline: the sysfs page would be full). */
static long long pcc_sum(int fd, int *fields)
{
    char buf[8192];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0 || buf[n - 1] != '\n') return -1;
    buf[n] = 0;
    long long sum = 0;
    int k = 0;
    for (char *p = buf; *p && *p != '\n';) {
        sum += strtoull(p, &p, 10);
        k++;
        if (*p == ',') p++;
    }
    if (fields) *fields = k;
    return sum;
}

/* The entries of /proc/stat's intr line: fs/proc/stat.c show_stat prints
 * "intr <sum>" then show_all_irqs prints kstat_irqs_usr(i) for every i below
 * nr_irqs (kernel/irq/irqdesc.c; desc->tot_count for ordinary IRQs, the
 * per-CPU sum for per-CPU-devid ones). Returns nr_irqs. */
static long long *stat_intr;
static int parse_intr(const char *text)
{
    const char *p = strstr(text, "\nintr ");
    if (!p) return -1;
    char *q = (char *)p + 6;
    strtoull(q, &q, 10); /* the total */
    int k = 0;
    while (*q == ' ') {
        stat_intr[k++] = strtoull(q + 1, &q, 10);
    }
    return k;
}

static void verify(int statfd)
{
    static int fds[8192];
    static long long before[8192], after[8192];
    int fields = 0, checked = 0, mismatches = 0, moving = 0, nonzero_without_dir = 0, nr = 0, retried = 0;
    char detail[2048] = "";
    for (int i = 0; i < nirqs; i++) {
        char path[64];
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/per_cpu_count", irqs[i]);
        fds[i] = open(path, O_RDONLY);
    }
    int pending[8192], npending = nirqs;
    for (int i = 0; i < nirqs; i++) pending[i] = i;
    /* per_cpu_count, then /proc/stat, then per_cpu_count again; an IRQ whose
     * sum did not move between the two must equal its /proc/stat entry. The
     * ones that moved are tried again, up to 20 passes. */
    for (int pass = 0; pass < 20 && npending; pass++) {
        for (int j = 0; j < npending; j++) before[pending[j]] = pcc_sum(fds[pending[j]], &fields);
        ssize_t n = pread(statfd, big, BIG - 1, 0);
        big[n > 0 ? n : 0] = 0;
        nr = parse_intr(big);
        for (int j = 0; j < npending; j++) after[pending[j]] = pcc_sum(fds[pending[j]], NULL);
        int still = 0;
        for (int j = 0; j < npending; j++) {
            int i = pending[j], irq = irqs[i];
            if (before[i] < 0 || before[i] != after[i]) { pending[still++] = i; continue; }
            checked++;
            long long s = irq < nr ? stat_intr[irq] : -1;
            if (s != before[i]) {
                mismatches++;
                size_t l = strlen(detail);
                if (l < sizeof detail - 64)
                    snprintf(detail + l, sizeof detail - l, "%sirq%d:stat=%lld,sum=%lld",
                             l ? ";" : "", irq, s, before[i]);
            }
        }
        npending = still;
        if (pass == 0) retried = still;
    }
    moving = npending;
    /* IRQ numbers with no sysfs directory (no descriptor) must read 0:
     * kstat_irqs_usr returns 0 when irq_to_desc finds nothing. */
    for (int k = 0, i = 0; k < nr; k++) {
        while (i < nirqs && irqs[i] < k) i++;
        if ((i >= nirqs || irqs[i] != k) && stat_intr[k]) nonzero_without_dir++;
    }
    for (int i = 0; i < nirqs; i++) close(fds[i]);
    printf("KCOST stat_checked=%d stat_retried=%d stat_mismatches=%d stat_moving=%d stat_nonzero_without_dir=%d "
           "stat_matches_sum=%s stat_detail=%s\n",
           checked, retried, mismatches, moving, nonzero_without_dir,
           mismatches || moving || nonzero_without_dir ? "no" : "yes", detail[0] ? detail : "-");
}

/* The IRQ the per_cpu_count/hwirq/actions figures use: the first IRQ with a
 * handler (actions non-empty; kernel/irq/irqdesc.c actions_show prints the
 * action names) and a domain (hwirq_show prints nothing without one), so
 * that each read formats what a vfio-msi vector's files would. */
static int pick_irq(void)
{
    char path[64], buf[256];
    for (int i = 0; i < nirqs; i++) {
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irqs[i]);
        if (slurp(path, buf, sizeof buf) <= 1 || !strstr(buf, "virtio")) continue;
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/hwirq", irqs[i]);
        if (slurp(path, buf, sizeof buf) <= 1) continue;
        return irqs[i];
    }
    for (int i = 0; i < nirqs; i++) {
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irqs[i]);
        if (slurp(path, buf, sizeof buf) <= 1) continue;
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/hwirq", irqs[i]);
        if (slurp(path, buf, sizeof buf) <= 1) continue;
        return irqs[i];
    }
    return nirqs ? irqs[0] : -1;
}

static void write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd >= 0) { if (write(fd, s, strlen(s)) < 0) {} close(fd); }
}

/* What the kept fds say once the IRQ is freed: unbinding the virtio-pci
 * devices frees their MSI-X vectors (drivers/pci/msi, irq_domain_free_irqs
 * -> irq_free_descs -> kernel/irq/irqdesc.c irq_sysfs_del), which removes
 * the kernfs nodes; a read through an fd opened before then fails in
 * fs/kernfs/file.c kernfs_fop_read_iter (kernfs_get_active) with ENODEV. Then
 * the devices are bound again: their new vectors may reuse the numbers,
 * and the old fds must stay dead (new kernfs nodes). */
static void sentinel(int irq, int fd_pcc, int fd_hw, int fd_act, int fd_stat)
{
    char buf[4096], path[300];
    DIR *d = opendir("/sys/bus/pci/drivers/virtio-pci");
    struct dirent *e;
    char devs[8][64];
    int ndev = 0;
    while (d && (e = readdir(d)) && ndev < 8)
        if (!strncmp(e->d_name, "0000:", 5)) snprintf(devs[ndev++], sizeof devs[0], "%.63s", e->d_name);
    if (d) closedir(d);
    for (int i = 0; i < ndev; i++) write_str("/sys/bus/pci/drivers/virtio-pci/unbind", devs[i]);
    int e_pcc = pread(fd_pcc, buf, sizeof buf, 0) < 0 ? errno : 0;
    int e_hw = pread(fd_hw, buf, sizeof buf, 0) < 0 ? errno : 0;
    int e_act = pread(fd_act, buf, sizeof buf, 0) < 0 ? errno : 0;
    ssize_t n = pread(fd_stat, big, BIG - 1, 0);
    big[n > 0 ? n : 0] = 0;
    int nr = parse_intr(big);
    long long freed_entry = irq < nr ? stat_intr[irq] : -1;
    snprintf(path, sizeof path, "/sys/kernel/irq/%d", irq);
    int dir_gone = access(path, F_OK) != 0;
    for (int i = 0; i < ndev; i++) write_str("/sys/bus/pci/drivers/virtio-pci/bind", devs[i]);
    int reused = access(path, F_OK) == 0;
    int e_hw2 = pread(fd_hw, buf, sizeof buf, 0) < 0 ? errno : 0;
    printf("KCOST freed_devices=%d freed_dir_gone=%s freed_per_cpu_count_errno=%s freed_hwirq_errno=%s "
           "freed_actions_errno=%s freed_stat_entry=%lld rebound_irq_reused=%s rebound_old_hwirq_fd_errno=%s\n",
           ndev, dir_gone ? "yes" : "no", e_pcc ? strerrorname_np(e_pcc) : "none",
           e_hw ? strerrorname_np(e_hw) : "none", e_act ? strerrorname_np(e_act) : "none", freed_entry,
           reused ? "yes" : "no", e_hw2 ? strerrorname_np(e_hw2) : "none");
}

/* The sentinel poll's cost: every IRQ's actions file kept open and read
 * once, then poll(0) over all of them with POLLPRI. The read matters: a fd
 * never read polls ready (fs/kernfs/file.c kernfs_generic_poll returns
 * EPOLLERR|EPOLLPRI while of->event differs from the node's event, which
 * starts at 1; only kernfs_seq_show copies it into of->event), so a daemon
 * reads each sentinel once when it opens it. First with one fd per IRQ,
 * then with each file opened again until there are POLL_MANY entries, as
 * many as the daemon keeps for 512 devices: separate opens rather than dup,
 * so that each entry is its own kernfs_open_file as the daemon's are. */
#define POLL_MANY 512
static int poll_fds[POLL_MANY];

/* Opens entry n (IRQ n modulo their count), reads it once, adds it to pfds. */
static int poll_open(int n)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irqs[n % nirqs]);
    if ((poll_fds[n] = open(path, O_RDONLY)) < 0) {
        printf("KCOST error poll_open=%s errno=%d\n", path, errno);
        return 0;
    }
    if (pread(poll_fds[n], buf, sizeof buf, 0) < 0) printf("KCOST error poll_read=%s errno=%d\n", path, errno);
    pfds[n].fd = poll_fds[n];
    pfds[n].events = POLLPRI;
    return 1;
}

static void poll_figure(const char *name, int n, int iters)
{
    poll_ready_max = 0;
    struct figure f = measure(OP_POLL, -1, n, iters);
    report(name, f, iters);
    printf("KCOST %s_fds=%d %s_per_fd_us=%.3f %s_ready=%d\n", name, n, name, f.wall / n, name, poll_ready_max);
}

static void poll_cost(void)
{
    int n = 0, first = nirqs < POLL_MANY ? nirqs : POLL_MANY;
    pfds = calloc(POLL_MANY, sizeof *pfds);
    while (n < first && poll_open(n)) n++;
    if (n) poll_figure("poll", n, 1000);
    while (n >= first && n < POLL_MANY && poll_open(n)) n++;
    if (n > first) poll_figure("poll_many", n, 200);
    for (int i = 0; i < n; i++) close(poll_fds[i]);
}

/* The distinct values among n revents (or errnos) into out: "0x0a" or
 * "0x0a,0x00"; "-" when n is 0. */
static const char *distinct(char *out, size_t size, const int *v, int n, const char *fmt)
{
    size_t l = 0;
    snprintf(out, size, "-");
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= v[j] == v[i];
        if (!seen && l < size - 16) l += snprintf(out + l, size - l, "%s", l ? "," : "");
        if (!seen && l < size - 16) l += snprintf(out + l, size - l, fmt, v[i]);
    }
    return out;
}

static int read_hex(const char *path)
{
    char buf[64];
    return slurp(path, buf, sizeof buf) > 0 ? (int)strtol(buf, NULL, 16) : -1;
}

/* Whether poll can stand in for the sentinel preads on this kernel, with
 * one fd per IRQ on its actions file (after sentinel(): the devices are
 * bound again, with new vectors, so the IRQs are listed afresh):
 *  - a fresh fd polls POLLERR|POLLPRI (kernfs_generic_poll, of->event 0
 *    against the node's 1), one read later it polls 0 (kernfs_seq_show);
 *  - unbinding virtio-rng frees its MSI-X vectors, whose kernfs nodes are
 *    removed (kernel/irq/irqdesc.c irq_sysfs_del): kernfs_fop_poll's
 *    kernfs_get_active fails and it returns DEFAULT_POLLMASK|EPOLLERR|EPOLLPRI,
 *    so with events=POLLPRI each of its fds polls POLLERR|POLLPRI, and a
 *    pread fails with ENODEV (kernfs_fop_read_iter, same check);
 *  - its INTx line's fd, when the unbind frees that descriptor too (see
 *    below), is reported apart;
 *  - every other IRQ's fd still polls 0: removal touches only those nodes.
 * virtio-rng (vendor 0x1af4, device 0x1005 transitional or 0x1044 modern)
 * because nothing in the guest depends on it. Last in the boot: it leaves
 * the device unbound. */
static void poll_semantics(void)
{
    static int fds[8192], revents[8192], errs[8192], mine[8192];
    static struct pollfd p[8192];
    char path[300], buf[256], bdf[64] = "", d1[256], d2[256], odd[1024] = "", vec[256] = "";
    int want = POLLERR | POLLPRI;

    nirqs = 0;
    sysfs_irqs();
    for (int i = 0; i < nirqs; i++) {
        snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irqs[i]);
        fds[i] = open(path, O_RDONLY);
        p[i].fd = fds[i];
        p[i].events = POLLPRI;
    }
    int ready = poll(p, nirqs, 0);
    for (int i = 0; i < nirqs; i++) revents[i] = p[i].revents;
    printf("KCOST poll_fresh_ready=%d/%d poll_fresh_revents=%s\n", ready, nirqs,
           distinct(d1, sizeof d1, revents, nirqs, "0x%02x"));
    for (int i = 0; i < nirqs; i++) pread(fds[i], buf, sizeof buf, 0);
    ready = poll(p, nirqs, 0);
    for (int i = 0; i < nirqs; i++) revents[i] = p[i].revents;
    printf("KCOST poll_after_read_ready=%d/%d poll_after_read_revents=%s\n", ready, nirqs,
           distinct(d1, sizeof d1, revents, nirqs, "0x%02x"));

    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    while (d && (e = readdir(d)) && !bdf[0]) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%.63s/vendor", e->d_name);
        if (read_hex(path) != 0x1af4) continue;
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%.63s/device", e->d_name);
        int dev = read_hex(path);
        if (dev == 0x1005 || dev == 0x1044) snprintf(bdf, sizeof bdf, "%.63s", e->d_name);
    }
    if (d) closedir(d);
    /* Its vectors: drivers/pci/msi/sysfs (msi_irqs/<N>, one per vector). */
    int k = 0;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/msi_irqs", bdf);
    d = bdf[0] ? opendir(path) : NULL;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        for (int i = 0; i < nirqs; i++)
            if (irqs[i] == atoi(e->d_name)) {
                mine[i] = 1;
                size_t l = strlen(vec);
                if (l < sizeof vec - 16) snprintf(vec + l, sizeof vec - l, "%s%d", k++ ? "," : "", irqs[i]);
            }
    }
    if (d) closedir(d);
    /* Its INTx line, which it holds though it uses MSI-X: pci_enable_device
     * maps the pin's GSI to an IRQ (drivers/acpi/pci_irq.c
     * acpi_pci_irq_enable), and the unbind's pci_disable_device unmaps it
     * (acpi_pci_irq_disable -> acpi_unregister_gsi -> arch/x86/kernel/apic/
     * io_apic.c mp_unmap_irq), which frees the descriptor when no other
     * device shares the pin: that IRQ's fd dies too, so it is reported on
     * its own and is not one of the others. With MSI-X enabled the irq file
     * shows that line (drivers/pci/pci-sysfs.c irq_show). */
    int intx = -1, intx_i = -1;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/irq", bdf);
    if (bdf[0] && slurp(path, buf, sizeof buf) > 0) intx = atoi(buf);
    for (int i = 0; i < nirqs; i++)
        if (irqs[i] == intx && !mine[i]) intx_i = i;
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/driver/unbind", bdf);
    if (bdf[0]) write_str(path, bdf);

    ready = poll(p, nirqs, 0);
    int mine_ready = 0, others_ready = 0, nmine = 0, nothers = 0;
    for (int i = 0; i < nirqs; i++) {
        if (i == intx_i) continue;
        if (!mine[i]) {
            nothers++;
            if (!p[i].revents) continue;
            others_ready++;
            size_t l = strlen(odd);
            int err = pread(fds[i], buf, sizeof buf, 0) < 0 ? errno : 0;
            if (l < sizeof odd - 64)
                snprintf(odd + l, sizeof odd - l, "%sirq%d:revents=0x%02x,errno=%d", l ? ";" : "", irqs[i],
                         p[i].revents, err);
            continue;
        }
        mine_ready += p[i].revents != 0;
        revents[nmine] = p[i].revents;
        errs[nmine++] = pread(fds[i], buf, sizeof buf, 0) < 0 ? errno : 0;
    }
    printf("KCOST poll_teardown_device=%s poll_teardown_irqs=%s poll_teardown_ready=%d/%d "
           "poll_teardown_revents=%s poll_teardown_pread_errno=%s poll_teardown_want=0x%02x\n",
           bdf[0] ? bdf : "none", vec[0] ? vec : "-", mine_ready, k, distinct(d1, sizeof d1, revents, nmine, "0x%02x"),
           distinct(d2, sizeof d2, errs, nmine, "%d"), want);
    int intx_err = intx_i < 0 ? 0 : pread(fds[intx_i], buf, sizeof buf, 0) < 0 ? errno : 0;
    printf("KCOST poll_teardown_intx=%d poll_teardown_intx_revents=0x%02x poll_teardown_intx_pread_errno=%d\n",
           intx, intx_i < 0 ? 0 : p[intx_i].revents, intx_err);
    printf("KCOST poll_others_ready=%d/%d poll_others_detail=%s poll_teardown_total_ready=%d\n", others_ready,
           nothers, odd[0] ? odd : "-", ready);
    for (int i = 0; i < nirqs; i++) close(fds[i]);
}

int main(void)
{
    char buf[4096], path[64];
    mkdir("/proc", 0755);
    mkdir("/sys", 0755);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("\n");  /* the firmware's escape codes end without a newline */
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
        snprintf(path, sizeof path, "/lib/modules/%s.ko", modules[i]);
        int fd = open(path, O_RDONLY);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
            printf("KCOST warn_module_%s=errno%d\n", modules[i], errno);
        if (fd >= 0) close(fd);
    }
    /* Probing is synchronous within finit_module for these drivers; give
     * the virtio-rng its first interrupts, so some IRQs count while the
     * check below runs. */
    sleep(1);
    big = malloc(BIG);
    stat_intr = calloc(1 << 16, sizeof *stat_intr);

    slurp("/sys/devices/system/cpu/possible", buf, sizeof buf);
    buf[strcspn(buf, "\n")] = 0;
    printf("KCOST possible=%s", buf);
    slurp("/sys/devices/system/cpu/online", buf, sizeof buf);
    buf[strcspn(buf, "\n")] = 0;
    printf(" online=%s", buf);
    slurp("/proc/sys/kernel/osrelease", buf, sizeof buf);
    buf[strcspn(buf, "\n")] = 0;
    printf(" kernel=%s\n", buf);

    sysfs_irqs();
    int irq = pick_irq();
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irq);
    slurp(path, buf, sizeof buf);
    buf[strcspn(buf, "\n")] = 0;
    printf("KCOST irq=%d irq_actions=%s sysfs_irqs=%d", irq, buf, nirqs);
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/chip_name", irq);
    slurp(path, buf, sizeof buf);
    buf[strcspn(buf, "\n")] = 0;
    printf(" irq_chip=%s\n", buf);

    int fd_pcc, fd_hw, fd_act, fd_stat, fd_int, fields = 0;
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/per_cpu_count", irq);
    fd_pcc = open(path, O_RDONLY);
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/hwirq", irq);
    fd_hw = open(path, O_RDONLY);
    snprintf(path, sizeof path, "/sys/kernel/irq/%d/actions", irq);
    fd_act = open(path, O_RDONLY);
    fd_stat = open("/proc/stat", O_RDONLY);
    fd_int = open("/proc/interrupts", O_RDONLY);

    /* Sizes: what one read returns. per_cpu_count through a 4096-byte buffer
     * as the daemon reads it (sysfs fills at most one page anyway:
     * fs/sysfs/file.c sysfs_kf_seq_show). /proc/stat through a 4096-byte
     * buffer too, to show whether a page-sized read would be cut, and
     * through a big one for its real size (fs/proc/stat.c stat_open sizes
     * the seq_file buffer from nr_irqs and the online CPUs). */
    ssize_t pcc_bytes = pread(fd_pcc, big, 4096, 0);
    pcc_sum(fd_pcc, &fields);
    ssize_t hw_bytes = pread(fd_hw, big, 4096, 0);
    ssize_t act_bytes = pread(fd_act, big, 4096, 0);
    ssize_t stat_4k = pread(fd_stat, big, 4096, 0);
    ssize_t stat_bytes = pread(fd_stat, big, BIG - 1, 0);
    big[stat_bytes > 0 ? stat_bytes : 0] = 0;
    int nr_irqs = parse_intr(big);
    ssize_t int_bytes = do_op(OP_READ_ALL, fd_int, BIG);
    printf("KCOST per_cpu_count_bytes=%zd per_cpu_count_fields=%d hwirq_bytes=%zd actions_bytes=%zd "
           "proc_stat_bytes=%zd proc_stat_4096_read=%zd nr_irqs=%d proc_interrupts_bytes=%zd\n",
           pcc_bytes, fields, hw_bytes, act_bytes, stat_bytes, stat_4k, nr_irqs, int_bytes);

    struct figure f;
    f = measure(OP_NULL, -1, 0, 20000);        report("null_syscall", f, 20000);
    f = measure(OP_PREAD, fd_pcc, 4096, 2000); report("per_cpu_count", f, 2000);
    f = measure(OP_PREAD, fd_hw, 4096, 2000);  report("hwirq", f, 2000);
    f = measure(OP_PREAD, fd_act, 4096, 2000); report("actions", f, 2000);
    f = measure(OP_PREAD, fd_stat, BIG, 500);  report("proc_stat", f, 500);
    f = measure(OP_READ_ALL, fd_int, BIG, 200); report("proc_interrupts", f, 200);

    poll_cost();

    verify(fd_stat);
    sentinel(irq, fd_pcc, fd_hw, fd_act, fd_stat);
    poll_semantics();
    printf("KCOST done\n");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
