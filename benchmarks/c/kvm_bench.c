/* The C baseline for kvmtest's benchmarks: the same ioctls, with no Python in the way.
 *   kvm_bench ioctl N   -> ns per KVM_GET_MP_STATE and per KVM_GET_REGS (N calls each)
 *   kvm_bench trace N   -> ms per msi-init-sipi trace (create VM, irqchip, 1 MiB, 2 vCPUs,
 *                          KVM_SET_LAPIC on each, INIT by MSI, observe, SIPI 0x10, observe, close)
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void check(int ret, const char *what)
{
	if (ret < 0) {
		perror(what);
		exit(1);
	}
}

static void observe(int vcpu)
{
	struct kvm_mp_state mp;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	check(ioctl(vcpu, KVM_GET_MP_STATE, &mp), "KVM_GET_MP_STATE");
	check(ioctl(vcpu, KVM_GET_REGS, &regs), "KVM_GET_REGS");
	check(ioctl(vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
}

static void trace(int kvm)
{
	int vm = ioctl(kvm, KVM_CREATE_VM, 0), vcpu[2], i;
	size_t size = 1 << 20;
	void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (unsigned long)mem,
	};
	struct kvm_lapic_state lapic;
	struct kvm_msi msi = { .address_lo = 0xfee00000 | 1 << 12 };

	check(vm, "KVM_CREATE_VM");
	check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
	check(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
	for (i = 0; i < 2; i++)
		check(vcpu[i] = ioctl(vm, KVM_CREATE_VCPU, i), "KVM_CREATE_VCPU");
	for (i = 0; i < 2; i++) {
		check(ioctl(vcpu[i], KVM_GET_LAPIC, &lapic), "KVM_GET_LAPIC");
		check(ioctl(vcpu[i], KVM_SET_LAPIC, &lapic), "KVM_SET_LAPIC");
	}
	msi.data = 0x500;
	check(ioctl(vm, KVM_SIGNAL_MSI, &msi), "KVM_SIGNAL_MSI");
	observe(vcpu[1]);
	msi.data = 0x610;
	check(ioctl(vm, KVM_SIGNAL_MSI, &msi), "KVM_SIGNAL_MSI");
	observe(vcpu[1]);
	for (i = 0; i < 2; i++)
		close(vcpu[i]);
	close(vm);
	munmap(mem, size);
}

int main(int argc, char **argv)
{
	int n = argc > 2 ? atoi(argv[2]) : 1000, kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), i;
	double t0;

	check(kvm, "/dev/kvm");
	if (argc > 1 && !strcmp(argv[1], "trace")) {
		t0 = now();
		for (i = 0; i < n; i++)
			trace(kvm);
		printf("%.6f\n", (now() - t0) / n * 1e3);
		return 0;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	check(ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	struct kvm_mp_state mp;
	struct kvm_regs regs;
	t0 = now();
	for (i = 0; i < n; i++)
		check(ioctl(vcpu, KVM_GET_MP_STATE, &mp), "KVM_GET_MP_STATE");
	double mp_ns = (now() - t0) / n * 1e9;
	t0 = now();
	for (i = 0; i < n; i++)
		check(ioctl(vcpu, KVM_GET_REGS, &regs), "KVM_GET_REGS");
	printf("%.1f %.1f\n", mp_ns, (now() - t0) / n * 1e9);
	return 0;
}
