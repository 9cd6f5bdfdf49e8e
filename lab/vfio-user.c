/*
 * vfio-user: a tiny VFIO user for the lab. It does what QEMU does to give a
 * guest a device's interrupts (hw/vfio/pci.c): open the container and the
 * device's IOMMU group, get the device fd, and enable INTx, MSI or MSI-X with
 * VFIO_DEVICE_SET_IRQS and eventfds. For QEMU's `edu` test device it can
 * also raise interrupts (BAR0 0x60 raises, 0x64 acknowledges), so the host's
 * vfio-intx / vfio-msi counters move.
 *
 *   vfio-user BDF PHASE [PHASE...]
 *   PHASE = MODE:VECTORS:FIRE   MODE intx|msi|msix|off|fire|msi/intx
 *
 * "fire" keeps the previous phase's vectors (same host IRQs, so an affinity
 * written in between stays) and only raises FIRE more interrupts. "msi/intx"
 * tries MSI and, if VFIO_DEVICE_SET_IRQS refuses it, falls back to INTx as
 * QEMU's vfio_msi_enable does when the host fails MSI (hw/vfio/pci.c, QEMU 7.2:
 * "vfio: Error: Failed to setup MSI fds", the guest then stays on INTx).
 * A failing VFIO_DEVICE_SET_IRQS prints the errno ("errno 16").
 *
 * Phases run in order. After setting up a phase and firing FIRE interrupts it
 * prints "PHASE n READY" and waits for SIGUSR1 before the next one; after the
 * last it waits for SIGTERM, keeping the vectors enabled, as a running guest
 * would.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <poll.h>
#include <limits.h>

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64

static volatile sig_atomic_t next_phase, stop;

static void on_usr1(int sig) { (void)sig; next_phase = 1; }
static void on_term(int sig) { (void)sig; stop = 1; }

static void die(const char *what)
{
	fprintf(stderr, "vfio-user: %s: %s (errno %d)\n", what, strerror(errno), errno);
	exit(1);
}

static int set_irqs(int dev, unsigned index, unsigned count, const int *fds)
{
	size_t sz = sizeof(struct vfio_irq_set) + sizeof(int) * count;
	struct vfio_irq_set *set = calloc(1, sz);
	if (!set)
		return -1;
	set->argsz = sz;
	set->index = index;
	set->start = 0;
	set->count = count;
	if (count) {
		set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
		memcpy(set->data, fds, sizeof(int) * count);
	} else {
		set->flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
	}
	int rc = ioctl(dev, VFIO_DEVICE_SET_IRQS, set);
	free(set);
	return rc;
}

static int unmask_intx(int dev)
{
	struct vfio_irq_set set = {
		.argsz = sizeof(set), .index = VFIO_PCI_INTX_IRQ_INDEX, .start = 0, .count = 1,
		.flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
	};
	return ioctl(dev, VFIO_DEVICE_SET_IRQS, &set);
}

static unsigned mode_index(const char *mode)
{
	return !strcmp(mode, "intx") ? VFIO_PCI_INTX_IRQ_INDEX
		: !strcmp(mode, "msi") ? VFIO_PCI_MSI_IRQ_INDEX
		: !strcmp(mode, "msix") ? VFIO_PCI_MSIX_IRQ_INDEX : VFIO_PCI_NUM_IRQS;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: vfio-user BDF MODE:VECTORS:FIRE...\n");
		return 2;
	}
	const char *bdf = argv[1];
	char path[PATH_MAX], link[PATH_MAX];
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		die("iommu_group");
	link[n] = 0;
	const char *group_id = strrchr(link, '/') + 1;

	int container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0)
		die("/dev/vfio/vfio");
	if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		die("VFIO API version");
	snprintf(path, sizeof(path), "/dev/vfio/%s", group_id);
	int group = open(path, O_RDWR);
	if (group < 0)
		die(path);
	struct vfio_group_status status = { .argsz = sizeof(status) };
	if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("group not viable (every device in the group must be bound to vfio-pci)");
	if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container))
		die("VFIO_GROUP_SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU))
		die("VFIO_SET_IOMMU");
	int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev < 0)
		die("VFIO_GROUP_GET_DEVICE_FD");

	/* Config space region: read vendor/device to know if it is an edu. */
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("config region");
	uint16_t ids[2];
	if (pread(dev, ids, 4, cfg.offset) != 4)
		die("config read");
	int edu = ids[0] == EDU_VENDOR && ids[1] == EDU_DEVICE;
	volatile uint32_t *bar0 = NULL;
	if (edu) {
		/* Memory space and bus master on, as a guest driver would. */
		uint16_t cmd;
		if (pread(dev, &cmd, 2, cfg.offset + 4) != 2)
			die("command read");
		cmd |= 0x6;
		if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2)
			die("command write");
		struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
		if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar))
			die("BAR0 info");
		void *m = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
		if (m == MAP_FAILED)
			die("BAR0 mmap");
		bar0 = m;
	}

	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	unsigned current = VFIO_PCI_NUM_IRQS;
	int fds[64];
	for (int p = 2; p < argc && !stop; p++) {
		char mode[16] = "";
		unsigned vectors = 1, fire = 0;
		if (sscanf(argv[p], "%15[a-z/]:%u:%u", mode, &vectors, &fire) < 1) {
			fprintf(stderr, "vfio-user: bad phase %s\n", argv[p]);
			return 2;
		}
		if (vectors > 64)
			vectors = 64;
		if (!strcmp(mode, "fire")) {
			if (current == VFIO_PCI_NUM_IRQS) {
				fprintf(stderr, "vfio-user: fire without vectors\n");
				return 2;
			}
			strcpy(mode, current == VFIO_PCI_INTX_IRQ_INDEX ? "intx"
			       : current == VFIO_PCI_MSI_IRQ_INDEX ? "msi" : "msix");
		} else {
			char *fallback = strchr(mode, '/');
			if (fallback)
				*fallback++ = 0;
			unsigned index = mode_index(mode);
			if (current != VFIO_PCI_NUM_IRQS) /* QEMU tears one mode down before the next */
				set_irqs(dev, current, 0, NULL);
			current = index;
			if (index != VFIO_PCI_NUM_IRQS) {
				for (unsigned i = 0; i < vectors; i++)
					fds[i] = eventfd(0, EFD_CLOEXEC);
				if (set_irqs(dev, index, vectors, fds)) {
					if (!fallback)
						die("VFIO_DEVICE_SET_IRQS");
					printf("FALLBACK VFIO_DEVICE_SET_IRQS %s: %s (errno %d); trying %s\n",
					       mode, strerror(errno), errno, fallback);
					fflush(stdout);
					strcpy(mode, fallback);
					current = index = mode_index(mode);
					if (index == VFIO_PCI_NUM_IRQS || set_irqs(dev, index, vectors, fds))
						die("VFIO_DEVICE_SET_IRQS (fallback)");
				}
			}
		}
		unsigned index = current;
		unsigned fired = 0;
		for (unsigned i = 0; i < fire && bar0 && index != VFIO_PCI_NUM_IRQS; i++) {
			bar0[EDU_IRQ_RAISE / 4] = 1;
			struct pollfd pfd = { .fd = fds[0], .events = POLLIN };
			if (poll(&pfd, 1, 1000) != 1)
				break;
			uint64_t value;
			if (read(fds[0], &value, sizeof(value)) != sizeof(value))
				break;
			bar0[EDU_IRQ_ACK / 4] = bar0[EDU_IRQ_STATUS / 4];
			if (index == VFIO_PCI_INTX_IRQ_INDEX)
				unmask_intx(dev);
			fired++;
		}
		printf("PHASE %d READY %s vectors=%u fired=%u\n", p - 1, mode, vectors, fired);
		fflush(stdout);
		next_phase = 0;
		while (!next_phase && !stop)
			pause();
	}
	return 0;
}
