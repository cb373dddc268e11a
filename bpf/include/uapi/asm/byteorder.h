/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* pnlb: BPF takes the host's byte order (clang's bpfel / bpfeb). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#include <linux/byteorder/little_endian.h>
#else
#include <linux/byteorder/big_endian.h>
#endif
