# SIPI landing page: copied to the start of every vector page VECTOR_FIRST .. VECTOR_LAST.
# After a SIPI with vector v the AP runs here with CS = v << 8, IP = 0. Position-independent:
# hand the vector (in AX) to the main image's AP entry at 0:ENTRY_AP.
    .code16
    .include "layout.inc"
    .text
    movw %cs, %ax
    ljmp $0, $ENTRY_AP
