# Autonomous SMP boot: the BSP alone brings up every AP, the way operating systems do, then
# reports how many APs checked in. No host stepping: every vCPU runs on its own thread.
#
# Parameters (written by the host at SMP_PARAMS): cpus, flags (SMP_BROADCAST, SMP_X2APIC),
# SIPI vector, wait limit (iterations of the counted wait for the APs).
# Variants: per APIC ID INIT, SIPI, SIPI (the MP-spec sequence) or INIT then one SIPI to
# all-but-self (kvm-unit-tests); xAPIC (MMIO through FS, preset by the host) or x2APIC (WRMSR).
# APs land on a landing page, reach ENTRY_AP, increment SMP_ONLINE atomically and park in HLT.

    .code16
    .include "layout.inc"
    .include "macros.inc"
    .text
    .include "ivt.inc"

exception_handler:
    REPORT_EXCEPTION
    PARK

    .org ENTRY_BSP, TRIPWIRE
    jmp bsp_entry
    .org ENTRY_AP, TRIPWIRE
    jmp ap_entry
    .org ENTRY_RESET, TRIPWIRE
    jmp reset_entry

ap_entry:
    xorw %bx, %bx
    movw %bx, %ds
    lock incw SMP_ONLINE
    PARK

reset_entry:                                # BX = CS seen at the reset vector
    cli
    movw %bx, %bp
    FLAT_SEGMENTS
    UNREAL_FS
    APIC_ID_TO_EAX
    movl %eax, %edi
    VALUE16 %bp
    VALUE %edi
    REPORT REP_RESET
    PARK

bsp_entry:
    cli
    FLAT_SEGMENTS
    movw $(STACK_BASE + STACK_SIZE), %sp
    movw $0, SMP_ONLINE
    testw $SMP_X2APIC, SMP_PARAMS + 2
    jz 1f
    movl $MSR_APIC_BASE, %ecx
    rdmsr
    orw $0x0c00, %ax
    wrmsr
1:  APIC_ID_TO_EAX
    movl %eax, %edi                         # own APIC ID
    movzbl SMP_PARAMS + 4, %ebp             # SIPI vector
    testw $SMP_BROADCAST, SMP_PARAMS + 2
    jz per_cpu

    movl $0x000c4500, %eax                  # INIT, level assert, all-but-self
    xorl %edx, %edx
    call send_ipi
    movl $0x000c4600, %eax                  # SIPI, all-but-self
    orl %ebp, %eax
    xorl %edx, %edx
    call send_ipi
    jmp wait_aps

per_cpu:
    xorl %esi, %esi                         # APIC ID to start
2:  cmpw SMP_PARAMS, %si
    jae wait_aps
    cmpl %edi, %esi
    je 3f
    movl $0x00004500, %eax                  # INIT, level assert
    movl %esi, %edx
    call send_ipi
    movl $0x00004600, %eax                  # SIPI
    orl %ebp, %eax
    movl %esi, %edx
    call send_ipi
    movl $0x00004600, %eax                  # second SIPI, as the MP spec asks
    orl %ebp, %eax
    movl %esi, %edx
    call send_ipi
3:  incl %esi
    jmp 2b

# Counted wait until cpus - 1 APs checked in (or the limit runs out).
wait_aps:
    movw SMP_PARAMS, %bx
    decw %bx
    movl SMP_PARAMS + 8, %ecx
1:  cmpw %bx, SMP_ONLINE
    jae 2f
    pause
    decl %ecx
    jnz 1b
2:  movl %ecx, %esi
    VALUE16 SMP_ONLINE
    VALUE16 %bx
    VALUE %esi
    REPORT REP_SMP
    PARK

# Send an IPI: EAX = ICR low, EDX = destination APIC ID. xAPIC: ICR high (ID << 24) then low,
# then a counted wait for the delivery-status bit; x2APIC: one WRMSR. Clobbers EAX-EDX.
send_ipi:
    pushl %eax
    pushl %edx
    X2APIC_TO_CF
    popl %edx
    popl %eax
    jc 2f
    shll $24, %edx
    movl %edx, %fs:XAPIC_ICR_HI
    movl %eax, %fs:XAPIC_ICR_LO
    movw $100, %cx
1:  testw $0x1000, %fs:XAPIC_ICR_LO
    jz 3f
    pause
    loop 1b
    jmp 3f
2:  movl $MSR_X2APIC_ICR, %ecx
    wrmsr
3:  ret

    .include "gdt.inc"
smp_end:
