#!/usr/bin/env python3
"""Where the XDP program's time goes, by source line.

This kernel's perf cannot annotate JIT-ed BPF code, so this maps perf's
samples to source lines itself, with the line map that the per-packet
bench writes (docs/benchmarks.md, "What a new flow's time is spent on").
It needs perf (Debian: apt-get install linux-perf); as root:

  cd crates/pnlb-dataplane
  cargo bench --bench xdp_per_packet --no-run
  PNLB_BENCH_PROFILE="new flow:20" perf record -g -C 1 -o /tmp/pnlb.perf -- \\
      taskset -c 1 ../../target/release/deps/xdp_per_packet-<hash> --bench none
  perf script -i /tmp/pnlb.perf -F ip,sym |
      ../../scripts/profile-lines.py ../../target/bench/jit-lines.txt

The case may also be an established flow's method ("dr:15", "nat:15").

It counts the samples taken inside the program (those whose stack holds
it) and prints two lists: the program's own instructions by source line,
and the kernel functions it calls (map operations, helpers) by the line
that calls them.
"""

import bisect
import collections
import re
import sys

# A JIT-ed program or subprogram's symbol: bpf_prog_<tag>_<name>.
JITED = re.compile(r"^bpf_prog_[0-9a-f]{16}_")
# Past the last line's start, what may still be the program's code.
LAST_LINE_SPAN = 4096


def load_lines(path):
    """[(address, 'file:line source')] sorted by address."""
    starts = []
    with open(path) as lines:
        for line in lines:
            address, _, where = line.rstrip("\n").partition(" ")
            starts.append((int(address, 16), where))
    starts.sort()
    return starts


def samples(stream):
    """Each sample's frames, leaf first: [(address, symbol)]."""
    frames = []
    for line in stream:
        line = line.strip()
        if not line:
            if frames:
                yield frames
            frames = []
            continue
        address, _, symbol = line.partition(" ")
        try:
            frames.append((int(address, 16), symbol))
        except ValueError:
            continue
    if frames:
        yield frames


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: perf script -F ip,sym | profile-lines.py <jit-lines.txt>")
    starts = load_lines(sys.argv[1])
    if not starts:
        sys.exit(f"{sys.argv[1]}: no line map")
    addresses = [address for address, _ in starts]

    def source_of(address):
        at = bisect.bisect_right(addresses, address) - 1
        return starts[at][1] if at >= 0 else "?"

    def ours(frame):
        address, symbol = frame
        return (
            JITED.match(symbol) is not None
            and addresses[0] <= address < addresses[-1] + LAST_LINE_SPAN
        )

    own = collections.Counter()
    called = collections.Counter()
    total = 0
    for frames in samples(sys.stdin):
        in_program = [frame for frame in frames if ours(frame)]
        if not in_program:
            continue
        total += 1
        leaf_address, leaf_symbol = frames[0]
        if ours(frames[0]):
            own[source_of(leaf_address)] += 1
        else:
            caller = source_of(in_program[0][0])
            called[(caller, leaf_symbol)] += 1
    if total == 0:
        sys.exit("no sample inside a BPF program (was it running under perf record -g?)")
    print(f"{total} samples inside the program")
    print("\nits own instructions, by source line:")
    for where, count in own.most_common(40):
        print(f"  {100 * count / total:5.1f}%  {where}")
    by_caller = collections.Counter()
    for (caller, _), count in called.items():
        by_caller[caller] += count
    print("\nkernel functions it calls, by the calling line:")
    for caller, count in by_caller.most_common(20):
        callees = sorted(
            ((c, s) for (w, s), c in called.items() if w == caller), reverse=True
        )
        names = ", ".join(f"{s} {100 * c / total:.1f}%" for c, s in callees[:4])
        print(f"  {100 * count / total:5.1f}%  {caller}\n          {names}")


if __name__ == "__main__":
    main()
