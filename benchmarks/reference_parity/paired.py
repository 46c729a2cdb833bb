"""Seed-paired differences between two recorded sides of parity.py runs (issue #16).

    python benchmarks/reference_parity/paired.py A B [--method bic] [--tolerance 3.7] [--out FILE.json]

A and B are `runs/<side>` folders that parity.py wrote (e.g. benchmarks/results/reference-parity-bic-more-seeds/
runs/ours and .../runs/reference). For each seed both recorded, the final accuracy of A and of B and A - B; then
the differences' mean and sample std, the standard error of a three-seed mean difference (std / sqrt 3), and how
often two sides whose seed-paired differences have this std and a true mean of 0 would still differ by more
than --tolerance in a three-seed mean (normal approximation). Two runs of one implementation whose random streams
differ (parity.py --reference-workers) measure that spread for code that is the same by construction.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def finals(side: Path, method: str) -> dict[int, float]:
    record = json.loads((side / f"{method}.json").read_text())
    return dict(zip(record["seeds"], record["final"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="runs/<side> folder of parity.py")
    parser.add_argument("b", type=Path, help="runs/<side> folder of parity.py")
    parser.add_argument("--method", default="bic")
    parser.add_argument("--tolerance", type=float, default=3.7, help="issue #16's tolerance for the method")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for side in (args.a, args.b):
        if not (side / f"{args.method}.json").is_file():
            parser.error(f"no {args.method}.json in {side} (a runs/<side> folder that parity.py wrote)")
    a, b = finals(args.a, args.method), finals(args.b, args.method)
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        parser.error(f"{args.a} and {args.b} share {len(seeds)} seed(s) of {args.method}; two or more are needed")
    differences = [a[s] - b[s] for s in seeds]
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    se3 = sd / math.sqrt(3)
    miss = 2 * (1 - statistics.NormalDist(0, se3).cdf(args.tolerance))
    lines = ["| seed | A | B | A - B |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {a[s]:.1f} | {b[s]:.1f} | {d:+.1f} |" for s, d in zip(seeds, differences)]
    lines.append(f"\nA = {args.a}, B = {args.b}, {args.method}, seeds {seeds[0]}-{seeds[-1]}: mean A - B {mean:+.1f}, "
                 f"sample std {sd:.1f}, SE of a three-seed mean difference {se3:.1f}; P(|three-seed mean difference| > "
                 f"{args.tolerance}) with true mean 0: {miss:.0%}")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "method": args.method, "seeds": seeds,
                                        "a_final": [a[s] for s in seeds], "b_final": [b[s] for s in seeds],
                                        "differences": differences, "mean": mean, "sample_std": sd,
                                        "se_three_seeds": se3, "tolerance": args.tolerance,
                                        "p_miss_three_seeds": miss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
