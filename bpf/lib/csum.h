/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Incremental checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
 * Values are 16-bit words exactly as they sit in the packet, so byte order
 * never matters: one's-complement sums are byte-order independent.
 */
#ifndef PNLB_CSUM_H
#define PNLB_CSUM_H

#include <linux/types.h>

static __always_inline __u16 pnlb_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/*
 * A checksum's change as words change, ~m + m' summed over them: several
 * changes to one checksum (addresses, ports, the TTL) are summed first and
 * folded into it once by pnlb_csum_apply. Any number of them fits: each
 * is under 2^17, and two folds take any 32-bit sum to 16 bits.
 */
static __always_inline __u32 pnlb_csum_delta2(__u16 from, __u16 to)
{
	return (__u32)(__u16)~from + to;
}

static __always_inline __u32 pnlb_csum_delta4(__u32 from, __u32 to)
{
	return pnlb_csum_delta2((__u16)(from >> 16), (__u16)(to >> 16)) +
	       pnlb_csum_delta2((__u16)from, (__u16)to);
}

static __always_inline void pnlb_csum_apply(__u16 *check, __u32 delta)
{
	*check = ~pnlb_csum_fold((__u32)(__u16)~*check + delta);
}

static __always_inline void pnlb_csum_replace2(__u16 *check, __u16 from, __u16 to)
{
	pnlb_csum_apply(check, pnlb_csum_delta2(from, to));
}

#endif
