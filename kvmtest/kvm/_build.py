"""cffi builder for the /dev/kvm bindings (API mode, out of line).

The C compiler reads <linux/kvm.h>, so struct layouts and ioctl numbers come from the kernel
headers, never from hand-copied offsets.  The few C helpers below exist for two reasons: ioctl()
is variadic (cffi should not call it directly), and KVM_RUN plus the exit decoding should cost one
call that releases the GIL, not a dozen attribute reads on the kvm_run page. And a whole
host-driven trace, planned op by op in Python (kvmtest.exec.batch), is one kvmtest_ioctl_batch()
call: its ~25 ioctls cost no Python between them.
"""

from cffi import FFI

# The decoded exit: one flat struct filled by kvmtest_run(), declared once for both sides.
EXIT_STRUCT = """
struct kvmtest_exit {
    __u32 reason;
    __u8 io_direction; __u8 io_size; __u16 io_port; __u32 io_count; __u64 io_data_offset;
    __u64 mmio_phys_addr; __u8 mmio_data[8]; __u32 mmio_len; __u8 mmio_is_write;
    __u64 fail_entry_reason; __u32 internal_suberror; __u32 internal_ndata; __u64 internal_data[4];
    __u32 system_event_type;
};
"""

# One step of kvmtest_ioctl_batch(): the plan says everything, the C loop only obeys it.
BATCH_STRUCT = """
#define KVMTEST_OP_IOCTL 0
#define KVMTEST_OP_PUT 1
#define KVMTEST_OP_OR 2
#define KVMTEST_OP_MMAP 3
#define KVMTEST_OP_MUNMAP 4
#define KVMTEST_OP_CLOSE 5
#define KVMTEST_CHECKED 1
#define KVMTEST_EXPECT 2
#define KVMTEST_IN_BUFFER 4
#define KVMTEST_ALWAYS 8
struct kvmtest_op {
    int kind;
    int fd;
    int store;
    int flags;
    int width;
    unsigned long request;
    unsigned long arg;
    __u64 value;
    long expect;
    long result;
};
"""

CDEF = r"""
typedef int... __u8;
typedef int... __u16;
typedef int... __u32;
typedef int... __u64;

#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_ENABLE_CAP ...
#define KVM_SIGNAL_MSI ...
#define KVM_SET_BOOT_CPU_ID ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_NMI ...
#define KVM_SMI ...
#define KVM_GET_STATS_FD ...

#define KVM_API_VERSION ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_SPLIT_IRQCHIP ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_X2APIC_API ...
#define KVM_CAP_X86_SMM ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_BOOT_CPU_ID ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_SIGNAL_MSI ...
#define KVM_CAP_MULTI_ADDRESS_SPACE ...

#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...

#define KVM_VCPUEVENT_VALID_NMI_PENDING ...
#define KVM_VCPUEVENT_VALID_SIPI_VECTOR ...
#define KVM_VCPUEVENT_VALID_SHADOW ...
#define KVM_VCPUEVENT_VALID_SMM ...
#define KVM_X2APIC_API_USE_32BIT_IDS ...
#define KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK ...

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11, r12, r13, r14, r15;
    __u64 rip, rflags;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector; __u8 type;
    __u8 present, dpl, db, s, l, g, avl; __u8 unusable; __u8 padding;
};
struct kvm_dtable { __u64 base; __u16 limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    ...;
};
struct kvm_mp_state { __u32 mp_state; };
struct kvm_lapic_state { char regs[...]; };
struct kvm_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 flags; __u32 devid; ...; };
struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
};
struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; ...; };
struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };
struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags; __u32 eax; __u32 ebx; __u32 ecx; __u32 edx; ...;
};
struct kvm_cpuid2 { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_vcpu_events {
    struct {
        __u8 injected; __u8 nr; __u8 has_error_code; __u8 pending; __u32 error_code;
    } exception;
    struct { __u8 injected; __u8 nr; __u8 soft; __u8 shadow; } interrupt;
    struct { __u8 injected; __u8 pending; __u8 masked; __u8 pad; } nmi;
    __u32 sipi_vector;
    __u32 flags;
    struct { __u8 smm; __u8 pending; __u8 smm_inside_nmi; __u8 latched_init; } smi;
    ...;
};
struct kvm_run;
"""

FUNCTIONS = r"""
int kvmtest_ioctl_ptr(int fd, unsigned long request, void *arg);
int kvmtest_ioctl_int(int fd, unsigned long request, unsigned long arg);
int kvmtest_run(int fd, struct kvm_run *run, struct kvmtest_exit *out);
void kvmtest_set_immediate_exit(struct kvm_run *run, int value);
int kvmtest_install_kick_handler(int signo);
int kvmtest_ioctl_batch(struct kvmtest_op *ops, int n, int *fds, char *buffer);
"""

SOURCE_HEAD = r"""
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/kvm.h>
"""

SOURCE = r"""
static int kvmtest_ioctl_ptr(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg);
}

static int kvmtest_ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    return ioctl(fd, request, arg);
}

/* KVM_RUN, then copy the part of kvm_run that the exit reason makes valid. */
static int kvmtest_run(int fd, struct kvm_run *run, struct kvmtest_exit *out)
{
    int ret = ioctl(fd, KVM_RUN, 0);
    int saved = errno;
    unsigned int i;

    out->reason = run->exit_reason;
    switch (run->exit_reason) {
    case KVM_EXIT_IO:
        out->io_direction = run->io.direction;
        out->io_size = run->io.size;
        out->io_port = run->io.port;
        out->io_count = run->io.count;
        out->io_data_offset = run->io.data_offset;
        break;
    case KVM_EXIT_MMIO:
        out->mmio_phys_addr = run->mmio.phys_addr;
        memcpy(out->mmio_data, run->mmio.data, 8);
        out->mmio_len = run->mmio.len;
        out->mmio_is_write = run->mmio.is_write;
        break;
    case KVM_EXIT_FAIL_ENTRY:
        out->fail_entry_reason = run->fail_entry.hardware_entry_failure_reason;
        break;
    case KVM_EXIT_INTERNAL_ERROR:
        out->internal_suberror = run->internal.suberror;
        out->internal_ndata = run->internal.ndata;
        for (i = 0; i < 4 && i < run->internal.ndata; i++)
            out->internal_data[i] = run->internal.data[i];
        break;
    case KVM_EXIT_SYSTEM_EVENT:
        out->system_event_type = run->system_event.type;
        break;
    }
    errno = saved;
    return ret;
}

static void kvmtest_set_immediate_exit(struct kvm_run *run, int value)
{
    __atomic_store_n(&run->immediate_exit, value, __ATOMIC_SEQ_CST);
}

static void kvmtest_kick_handler(int signo)
{
    (void)signo;
}

/* A do-nothing handler without SA_RESTART: its only job is to make KVM_RUN return EINTR.
   Installed from C so that it works whichever Python thread asks and never runs Python code. */
static int kvmtest_install_kick_handler(int signo)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kvmtest_kick_handler;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL);
}

static void kvmtest_patch(char *at, int width, __u64 value, int or_in)
{
    switch (width) {
    case 1: *(__u8 *)at = or_in ? *(__u8 *)at | value : value; break;
    case 2: *(__u16 *)at = or_in ? *(__u16 *)at | value : value; break;
    case 4: *(__u32 *)at = or_in ? *(__u32 *)at | value : value; break;
    default: *(__u64 *)at = or_in ? *(__u64 *)at | value : value; break;
    }
}

/* Run ops[0..n) in order; fds[] is the fd table (slot 0: /dev/kvm), `buffer` the run's
   memory that IN_BUFFER args point into. A CHECKED op that fails (result < 0, or with EXPECT
   a result other than `expect`) stops the plan: only ALWAYS ops (the teardown) run after it.
   Returns the failed op's index (errno its error, 0 for a wrong count), or n. */
static int kvmtest_ioctl_batch(struct kvmtest_op *ops, int n, int *fds, char *buffer)
{
    int i, failed = n, saved = 0;

    for (i = 0; i < n; i++) {
        struct kvmtest_op *op = &ops[i];
        char *at = buffer + op->arg;
        long ret = 0;

        if (failed < n && !(op->flags & KVMTEST_ALWAYS))
            continue;
        switch (op->kind) {
        case KVMTEST_OP_IOCTL:
            ret = ioctl(fds[op->fd], op->request,
                        op->flags & KVMTEST_IN_BUFFER ? (unsigned long)at : op->arg);
            if (ret < 0)
                ret = -errno;
            break;
        case KVMTEST_OP_PUT:
        case KVMTEST_OP_OR:
            kvmtest_patch(at, op->width, op->value, op->kind == KVMTEST_OP_OR);
            break;
        case KVMTEST_OP_MMAP: {
            /* The address goes where the op says: a kvm_userspace_memory_region. */
            void *memory = mmap(NULL, op->value, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (memory == MAP_FAILED)
                ret = -errno;
            else
                *(__u64 *)at = (uintptr_t)memory;
            break;
        }
        case KVMTEST_OP_MUNMAP:
            if (*(__u64 *)at) {
                munmap((void *)(uintptr_t)*(__u64 *)at, op->value);
                *(__u64 *)at = 0;
            }
            break;
        case KVMTEST_OP_CLOSE:
            if (fds[op->fd] >= 0) {
                close(fds[op->fd]);
                fds[op->fd] = -1;
            }
            break;
        }
        op->result = ret;
        if (ret >= 0 && op->store >= 0)
            fds[op->store] = (int)ret;
        if (failed == n && (op->flags & KVMTEST_CHECKED)
            && (ret < 0 || ((op->flags & KVMTEST_EXPECT) && ret != op->expect))) {
            failed = i;
            saved = ret < 0 ? (int)-ret : 0;
        }
    }
    errno = saved;
    return failed;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF + EXIT_STRUCT + BATCH_STRUCT + FUNCTIONS)
ffibuilder.set_source("kvmtest.kvm._kvm_cffi", SOURCE_HEAD + EXIT_STRUCT + BATCH_STRUCT + SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
