# copy.s: DMA copy of a 2-D block in device memory, through the int8 scratchpad.
#
#   tritium asm firmware/examples/copy.s -o copy.bin
#   tritium run --device golden firmware/examples/copy.s --load 0x1000:data.bin --dump 0x2000:512
#
# ROWS rows of ROW bytes are read from SRC (rows SRC_STRIDE apart) and written densely to DST.
# Sizes, addresses and strides are multiples of 16 bytes, so the program is valid for every
# preset's bus width (tiny 4, base 8, large 16 bytes). The block is moved in two halves into
# disjoint scratchpad regions: the controller may overlap the second LOAD with the first STORE.

.equ SRC,        0x1000          # source block in device memory
.equ SRC_STRIDE, 128             # bytes between source rows
.equ DST,        0x2000          # destination (dense rows)
.equ ROW,        64              # bytes per row
.equ HALF,       4               # rows per half
.equ ROWS,       2 * HALF        # rows in the block
.equ BUF_A,      0               # scratchpad buffers
.equ BUF_B,      HALF * ROW

start:
    load  space=spad, rows=HALF, row_bytes=ROW, loc=BUF_A, dram=SRC, stride=SRC_STRIDE
    load  space=spad, rows=HALF, row_bytes=ROW, loc=BUF_B, dram=SRC + HALF*SRC_STRIDE, stride=SRC_STRIDE
    store space=spad, rows=HALF, row_bytes=ROW, loc=BUF_A, dram=DST, stride=ROW
    store space=spad, rows=HALF, row_bytes=ROW, loc=BUF_B, dram=DST + HALF*ROW, stride=ROW
    halt
