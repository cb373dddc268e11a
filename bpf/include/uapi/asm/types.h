/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* pnlb: BPF is its own architecture; the generic definitions fit it. */
#include <asm-generic/types.h>
