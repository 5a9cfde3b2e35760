"""The guests' memory map, ports and protocol numbers: a mirror of guests/src/layout.inc.

Pure constants, so the simulated system can use them without the bindings.
"""

# --- memory map, ports and protocol numbers: mirror of guests/src/layout.inc -----------------
# (tests/guests/test_images.py checks that every `.set` there has the same value here)
RAM_SIZE = 0x100000
IVT_BASE = 0x0000
STUBS_BASE = 0x0400
STUB_SIZE = 5
ENTRY_BSP = 0x1000
ENTRY_AP = 0x1003
ENTRY_RESET = 0x1006
IMAGE_LIMIT = 0x3000
MAILBOX_BASE = 0x3000
MAILBOX_SIZE = 16
MAX_CPUS = 64
SMP_PARAMS = 0x3400
SMP_ONLINE = 0x3410
STACK_BASE = 0x4000
STACK_SIZE = 0x100
VECTOR_FIRST = 0x08
VECTOR_LAST = 0x9F
ROM_BASE = 0xFFFF0000
ROM_SIZE = 0x10000
RESET_OFFSET = 0xFFF0
XAPIC_BASE = 0xFEE00000
XAPIC_ID = 0x20
XAPIC_ICR_LO = 0x300
XAPIC_ICR_HI = 0x310
MSR_APIC_BASE = 0x1B
MSR_X2APIC_ID = 0x802
MSR_X2APIC_ICR = 0x830
GDT_SEL_XAPIC = 0x08
PORT_CONSOLE = 0xE9
PORT_VALUE = 0xEA
PORT_REPORT = 0xEB
CMD_NONE = 0x00
CMD_ICR = 0x10
CMD_X2APIC = 0x11
CMD_HLT = 0x12
CMD_CS_IP = 0x13
CMD_SPIN = 0x14
CMD_JUMP = 0x15
REP_READY = 0x01
REP_SIPI = 0x02
REP_RESET = 0x03
REP_SMP = 0x05
REP_EXCEPTION = 0x0E
REP_ERROR = 0x0F
ERR_BAD_COMMAND = 1
ERR_APIC_ID = 2
SMP_BROADCAST = 1
SMP_X2APIC = 2
TRIPWIRE = 0xCC

RAM_SLOT = 0
ROM_SLOT = 1
MAIN_IMAGES = ("stepper", "smp")
IRQCHIPS = ("kernel", "split")
MP_STATE_HALTED = 3
