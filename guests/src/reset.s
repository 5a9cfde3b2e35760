# Reset ROM code, placed at the reset vector (ROM_BASE + RESET_OFFSET = 0xfffffff0; CS base
# 0xffff0000, IP 0xfff0). The rest of the ROM is tripwire, so reaching the main image's
# ENTRY_RESET proves the vCPU came through the reset vector. Hands over CS in BX.
    .code16
    .include "layout.inc"
    .text
    movw %cs, %bx
    ljmp $0, $ENTRY_RESET
    .org 16, TRIPWIRE
