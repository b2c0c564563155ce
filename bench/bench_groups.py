"""Near-duplicate grouping at scale: the graph index against comparing every pair.

Generated fingerprints (``pipeline.synth.fingerprints``: half the frames in clusters of 2-12
near-identical ones, the rest unrelated), grouped as the data engine does (candidates ->
thumbnail check -> connected components). Each size runs in its own process, so its peak
memory (VmHWM) is its own. Printed: time, peak memory, the growth exponent between the
smallest and largest size, and where the exact search is affordable, the share of its
verified pairs the graph index found and whether the groups are identical. The old method
(numpy all-pairs in blocks + a Python union-find) is timed at the sizes where it still ends;
faiss' exact search (the engine's method up to EXACT_MAX_FILES) up to where the graph catches up.

    .venv/bin/python bench/bench_groups.py [--sizes 100000 300000 1000000] [--old 10000 20000 40000] [--exact 100000 200000 300000]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

from common import REPO

CHILD = """
import json, re, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from pipeline import synth
from pipeline.engine.dedupe import THUMB_MAX_DIFFERENCE, connected_components, near_duplicate_pairs, verified
n, method, check = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
phash, thumbs = synth.fingerprints(n, seed=1)
start = time.perf_counter()
if method == "old":
    pairs = []
    for s in range(0, n, 1024):
        d = np.bitwise_count(phash[s:s + 1024, None] ^ phash[None, :])
        i, j = np.nonzero(d <= 12); i += s; keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    pairs = verified(np.concatenate(pairs), thumbs, THUMB_MAX_DIFFERENCE)
    parent = np.arange(n)
    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]; x = parent[x]
        return x
    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb: parent[max(ra, rb)] = min(ra, rb)
    groups = np.array([root(i) for i in range(n)])
else:
    pairs = near_duplicate_pairs(phash, thumbs, 12, THUMB_MAX_DIFFERENCE, exact_max=n if method == "exact" else 0)
    groups = connected_components(n, pairs)
seconds = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
result = {{"n": n, "method": method, "seconds": seconds, "peak_mb": peak, "pairs": len(pairs), "groups": int(len(np.unique(groups)))}}
if check:
    exact = near_duplicate_pairs(phash, thumbs, 12, THUMB_MAX_DIFFERENCE, exact_max=n)
    key = lambda p: p[:, 0].astype(np.int64) * n + p[:, 1]
    result["pair_recall"] = float(np.isin(key(exact), key(pairs)).mean())
    reference = connected_components(n, exact)
    result["same_groups"] = bool(np.array_equal(reference, groups))
    # files whose whole group is the exact one: (exact group, graph group) pairs covering both groups entirely
    pairs_of = np.unique(np.stack([reference, groups], axis=1), axis=0, return_inverse=True, return_counts=True)
    both = pairs_of[2][pairs_of[1].ravel()]
    size_exact = np.bincount(reference, minlength=n)[reference]
    size_graph = np.bincount(groups, minlength=n)[groups]
    result["files_same_group"] = float(((both == size_exact) & (both == size_graph)).mean())
print(json.dumps(result))
"""


def run(n: int, method: str, check: bool) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(n), method, "1" if check else "0"],
                          capture_output=True, text=True, timeout=7200)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--old", type=int, nargs="*", default=[10_000, 20_000, 40_000])
    parser.add_argument("--exact", type=int, nargs="*", default=[100_000, 200_000, 300_000],
                        help="time faiss' exact search (the engine's method up to EXACT_MAX_FILES) at these sizes")
    parser.add_argument("--check-up-to", type=int, default=300_000, help="compare with the exact search up to this size")
    args = parser.parse_args()
    print("| method | fingerprints | seconds | peak MB | verified pairs | groups | pairs found vs exact | files in exactly the exact method's group |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for method, sizes in (("old", args.old), ("exact", args.exact), ("graph", args.sizes)):
        for n in sizes:
            r = run(n, method, method == "graph" and n <= args.check_up_to)
            results[(method, n)] = r
            recall = f"{r['pair_recall']:.4%}" if "pair_recall" in r else ""
            same = ("all" if r["same_groups"] else f"{r['files_same_group']:.4%} of files") if "same_groups" in r else ""
            print(f"| {method} | {n:,} | {r['seconds']:.1f} | {r['peak_mb']} | {r['pairs']:,} | {r['groups']:,} | {recall} | {same} |", flush=True)
    for method, sizes in (("old", args.old), ("exact", args.exact), ("graph", args.sizes)):
        if len(sizes) >= 2:
            lo, hi = results[(method, sizes[0])], results[(method, sizes[-1])]
            exponent = math.log(hi["seconds"] / lo["seconds"]) / math.log(hi["n"] / lo["n"])
            memory = math.log(hi["peak_mb"] / lo["peak_mb"]) / math.log(hi["n"] / lo["n"])
            print(f"{method}: time grows as N^{exponent:.2f}, peak memory as N^{memory:.2f} ({sizes[0]:,} -> {sizes[-1]:,})")


if __name__ == "__main__":
    main()
