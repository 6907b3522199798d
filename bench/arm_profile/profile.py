"""Instructions per function of an aarch64 program, from pcprof.c's output, marginal per run.

    python3 bench/arm_profile/profile.py BINARY ONE.txt MANY.txt RUNS [TOP]

ONE.txt and MANY.txt are pcprof outputs of the same program run once and RUNS + 1 times (e.g.
crates/kernels' network_runs example with N = 1 and N = 6, RUNS = 5): the difference divided by RUNS is
what one more inference costs, start-up and model loading cancelled. Addresses are mapped to the
binary's symbols (aarch64-linux-gnu-nm) at qemu-user's load address for position-independent programs,
0x5500000000; code outside the binary (libc, the loader) is one line.
"""
import bisect
import collections
import subprocess
import sys

BASE = 0x5500000000


def symbols(binary):
    listing = subprocess.run(['aarch64-linux-gnu-nm', '-C', '--defined-only', binary],
                             capture_output=True, text=True, check=True).stdout
    found = []
    for line in listing.splitlines():
        parts = line.split(' ', 2)
        if len(parts) == 3 and parts[1] in 'tTwW':
            found.append((int(parts[0], 16), parts[2]))
    found.sort()
    return found


def per_function(path, table):
    starts = [a for a, _ in table]
    totals = collections.Counter()
    with open(path) as f:
        for line in f:
            pc, count = line.split()
            offset = int(pc, 16) - BASE
            i = bisect.bisect_right(starts, offset) - 1
            inside = i >= 0 and 0 <= offset < starts[-1] + (1 << 20)
            totals[table[i][1] if inside else '(outside the binary)'] += int(count)
    return totals


def main():
    binary, one, many, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    top = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    table = symbols(binary)
    first, last = per_function(one, table), per_function(many, table)
    rows = sorted(((last[n] - first[n]) / runs, n) for n in set(first) | set(last))
    rows.reverse()
    print(f"{sum(r for r, _ in rows) / 1e6:8.2f} M per run")
    for count, name in rows[:top]:
        print(f"{count / 1e6:8.2f} M  {name[:120]}")


if __name__ == '__main__':
    main()
