/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Bob Jenkins' lookup3 hash over 32-bit words (the kernel's jhash2).
 * pnlb-core's flow::jhash2 is the same function, so the control plane and
 * tests can predict which table slot a flow lands in.
 */
#ifndef PNLB_JHASH_H
#define PNLB_JHASH_H

#include <linux/types.h>

#define PNLB_ROL32(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

#define PNLB_JHASH_MIX(a, b, c)                                                \
	do {                                                                   \
		a -= c; a ^= PNLB_ROL32(c, 4); c += b;                         \
		b -= a; b ^= PNLB_ROL32(a, 6); a += c;                         \
		c -= b; c ^= PNLB_ROL32(b, 8); b += a;                         \
		a -= c; a ^= PNLB_ROL32(c, 16); c += b;                        \
		b -= a; b ^= PNLB_ROL32(a, 19); a += c;                        \
		c -= b; c ^= PNLB_ROL32(b, 4); b += a;                         \
	} while (0)

#define PNLB_JHASH_FINAL(a, b, c)                                              \
	do {                                                                   \
		c ^= b; c -= PNLB_ROL32(b, 14);                                \
		a ^= c; a -= PNLB_ROL32(c, 11);                                \
		b ^= a; b -= PNLB_ROL32(a, 25);                                \
		c ^= b; c -= PNLB_ROL32(b, 16);                                \
		a ^= c; a -= PNLB_ROL32(c, 4);                                 \
		b ^= a; b -= PNLB_ROL32(a, 14);                                \
		c ^= b; c -= PNLB_ROL32(b, 24);                                \
	} while (0)

#define PNLB_JHASH_INITVAL 0xdeadbeef

/* len is a compile-time constant at every call site, so the loop unrolls. */
static __always_inline __u32 pnlb_jhash2(const __u32 *k, __u32 len, __u32 initval)
{
	__u32 a, b, c;

	a = b = c = PNLB_JHASH_INITVAL + (len << 2) + initval;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (len <= 3)
			break;
		a += k[0];
		b += k[1];
		c += k[2];
		PNLB_JHASH_MIX(a, b, c);
		len -= 3;
		k += 3;
	}
	switch (len) {
	case 3:
		c += k[2];
		/* fallthrough */
	case 2:
		b += k[1];
		/* fallthrough */
	case 1:
		a += k[0];
		PNLB_JHASH_FINAL(a, b, c);
		/* fallthrough */
	case 0:
		break;
	}
	return c;
}

#endif
