#!/usr/bin/env python3
"""Where a push's controller samples went: perf data cut to the push
window (from the first sample in the campaign pass to the last one
building an update), then each function's share of the window's samples
(its own and its callees'), and what it called.

With --leaf instead of functions: the functions the window's samples
were in when taken (self time), largest first. That is how allocator
time shows up: malloc and free are leaves under many callers.

usage: breakdown.py PERF_DATA [FUNCTION ... | --leaf]
"""
import collections
import re
import subprocess
import sys

DEFAULT = [
    "Deployer::recompute",
    "deploy::desire",
    "Registry::insert",
    "CredentialIndex::add",
    "Material::generate",
    "put_new_lures",
    "Deployer::next_update",
    "lures::render",
    "Deployer::settle",
    "Deployer::campaign",
    "h2::",
    "rustls",
]


# A sample's first line is its time ("1991.861452:"), indented by some
# versions of perf; its frames are an address and a symbol.
HEADER = re.compile(r"^\s*\d+\.\d+:\s*$")


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "time,ip,sym"],
        capture_output=True, text=True, check=True,
    ).stdout
    cur = None
    for line in out.split("\n"):
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif HEADER.match(line):
            cur = (float(line.split()[-1].rstrip(":")), [])
        elif cur is not None:
            frame = line.strip()
            cur[1].append(frame.split(" ", 1)[1] if " " in frame else frame)
    if cur:
        yield cur


def main():
    every = list(samples(sys.argv[1]))
    starts = [t for t, st in every if any("recompute" in f for f in st)]
    ends = [t for t, st in every if any("next_update" in f for f in st)]
    if not starts or not ends:
        sys.exit("no campaign pass in this profile")
    a, b = min(starts) - 0.05, max(ends)
    window = [st for t, st in every if a <= t <= b]
    total = len(window)
    print(f"push window {b - a:.2f} s: {total} of {len(every)} samples")
    if sys.argv[2:] == ["--leaf"]:
        leaves = collections.Counter(st[0] for st in window if st)
        for leaf, k in leaves.most_common(30):
            print(f"{100 * k / total:5.1f} %  {leaf[:100]}")
        return
    for func in sys.argv[2:] or DEFAULT:
        callees = collections.Counter()
        n = 0
        for st in window:
            at = [i for i, f in enumerate(st) if func in f]
            if at:
                n += 1
                i = max(at)
                callees[st[i - 1] if i > 0 else "(itself)"] += 1
        print(f"{100 * n / total:5.1f} %  {func}")
        for callee, k in callees.most_common(3):
            print(f"           {100 * k / total:5.1f} %  {callee[:100]}")


if __name__ == "__main__":
    main()
