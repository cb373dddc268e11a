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

static __always_inline void pnlb_csum_replace2(__u16 *check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~*check;

	sum += (__u16)~from;
	sum += to;
	*check = ~pnlb_csum_fold(sum);
}

static __always_inline void pnlb_csum_replace4(__u16 *check, __u32 from, __u32 to)
{
	pnlb_csum_replace2(check, (__u16)(from >> 16), (__u16)(to >> 16));
	pnlb_csum_replace2(check, (__u16)from, (__u16)to);
}

#endif
