# Stepper: every vCPU runs a command loop driven by the host.
#
# The host writes a command into the vCPU's mailbox (MAILBOX_BASE + APIC ID * MAILBOX_SIZE) and
# re-enters the vCPU; the guest takes the command, clears the command word, performs it and
# answers with a report (ports PORT_VALUE/PORT_REPORT), which exits to the host. So a vCPU waiting
# for its next command is outside KVM_RUN, and the guest never polls memory.
#
# Entries: ENTRY_BSP (the host's initial CS:IP; FS preset by the host to the xAPIC page),
# ENTRY_AP (from a landing page after a SIPI), ENTRY_RESET (from the reset ROM after an INIT).
# Register use in the loop: SI = own mailbox, DI = own APIC ID, SP = own stack.

    .code16
    .include "layout.inc"
    .include "macros.inc"
    .text
    .include "ivt.inc"

# Report the exception; resume the command loop if it came from a command (say a #GP from a
# WRMSR with reserved ICR bits), park otherwise (stray execution, code outside the stepper).
exception_handler:
    REPORT_EXCEPTION
    cmpb $3, %bl
    je 1f
    testw %dx, %dx
    jnz 1f
    cmpw $ENTRY_BSP, %cx
    jb 1f
    cmpw $stepper_end, %cx
    jae 1f
    FLAT_SEGMENTS
    UNREAL_FS
    jmp setup_then_loop
1:  PARK

    .org ENTRY_BSP, TRIPWIRE
    jmp bsp_entry
    .org ENTRY_AP, TRIPWIRE
    jmp ap_entry
    .org ENTRY_RESET, TRIPWIRE
    jmp reset_entry

    .if STACK_SIZE != 0x100 || MAILBOX_SIZE != 16
    .error "setup below shifts by 8 and 4"
    .endif

# DI = APIC ID, SP = top of own stack, SI = own mailbox. No stack needed. Clobbers EAX-EDX.
.macro SETUP
    APIC_ID_TO_EAX
    cmpl $MAX_CPUS, %eax
    jae bad_apic_id
    movl %eax, %edi
    shlw $8, %ax
    addw $(STACK_BASE + STACK_SIZE), %ax
    movw %ax, %sp
    movw %di, %si
    shlw $4, %si
    addw $MAILBOX_BASE, %si
.endm

bsp_entry:
    cli
    FLAT_SEGMENTS
    SETUP
    VALUE %edi
    REPORT REP_READY
    jmp cmd_loop

ap_entry:                                   # AX = CS = vector << 8
    cli
    movw %ax, %bp
    FLAT_SEGMENTS
    UNREAL_FS
    SETUP
    movzwl %bp, %eax
    shrl $8, %eax
    VALUE %eax
    VALUE %edi
    REPORT REP_SIPI
    jmp cmd_loop

reset_entry:                                # BX = CS seen at the reset vector
    cli
    movw %bx, %bp
    FLAT_SEGMENTS
    UNREAL_FS
    SETUP
    VALUE16 %bp
    VALUE %edi
    REPORT REP_RESET
    jmp cmd_loop

setup_then_loop:
    SETUP
cmd_loop:
    movw (%si), %ax
    movw $CMD_NONE, (%si)
    cmpw $CMD_ICR, %ax
    je do_icr
    cmpw $CMD_X2APIC, %ax
    je do_x2apic
    cmpw $CMD_HLT, %ax
    je do_hlt
    cmpw $CMD_CS_IP, %ax
    je do_cs_ip
    cmpw $CMD_SPIN, %ax
    je do_spin
    cmpw $CMD_JUMP, %ax
    je do_jump
    movzwl %ax, %ebx
    VALUE $ERR_BAD_COMMAND
    VALUE %ebx
    REPORT REP_ERROR
    jmp cmd_loop

# Write the 64-bit ICR in the current APIC mode: xAPIC high then low (the low write sends),
# x2APIC one WRMSR (EDX = high, EAX = low).
do_icr:
    X2APIC_TO_CF
    movl 4(%si), %eax
    movl 8(%si), %edx
    jc 1f
    movl %edx, %fs:XAPIC_ICR_HI
    movl %eax, %fs:XAPIC_ICR_LO
    jmp 2f
1:  movl $MSR_X2APIC_ICR, %ecx
    wrmsr
2:  REPORT CMD_ICR
    jmp cmd_loop

do_x2apic:
    movl $MSR_APIC_BASE, %ecx
    rdmsr
    orw $0x0c00, %ax
    wrmsr
    rdmsr
    VALUE %eax
    REPORT CMD_X2APIC
    jmp cmd_loop

# IF stays 0: only NMI, INIT, SIPI (KVM wakes a halted vCPU on SIPI) or a reset end the HLT.
do_hlt:
    hlt
    REPORT CMD_HLT
    jmp cmd_loop

do_cs_ip:
    movw %cs, %bx
    VALUE16 %bx
    call 1f
1:  popw %bx
    VALUE16 %bx
    REPORT CMD_CS_IP
    jmp cmd_loop

do_spin:
    movl 4(%si), %ecx
    testl %ecx, %ecx
    jz 2f
1:  decl %ecx
    jnz 1b
2:  REPORT CMD_SPIN
    jmp cmd_loop

# Far jump to a linear address below 1 MiB: CS = address >> 4, IP = address & 0xf.
do_jump:
    movl 4(%si), %eax
    movl %eax, %ebx
    shrl $4, %ebx
    andw $0x0f, %ax
    pushw %bx
    pushw %ax
    lretw

bad_apic_id:
    movl %eax, %ebx
    VALUE $ERR_APIC_ID
    VALUE %ebx
    REPORT REP_ERROR
    PARK

    .include "gdt.inc"
stepper_end:
