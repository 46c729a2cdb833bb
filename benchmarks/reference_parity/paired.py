"""Seed-paired differences between two recorded sides of parity.py runs (issue #16).

    python benchmarks/reference_parity/paired.py A B [--method bic] [--tolerance 3.7] [--out FILE.json]

A and B are `runs/<side>` folders that parity.py wrote (e.g. benchmarks/results/reference-parity-bic-more-seeds/
runs/ours and .../runs/reference). For each seed both recorded, the final accuracy of A and of B and A - B; then
the differences' mean and sample std, the standard error of a three-seed mean difference (std / sqrt 3), and how
often two sides whose seed-paired differences have this std and a true mean of 0 would still differ by more
than --tolerance in a three-seed mean (normal approximation), and the 95 % t-interval of the mean difference.
Two runs of one implementation whose random streams differ (parity.py --reference-workers) measure that spread for
code that is the same by construction.

Where the records hold each seed's accuracy matrix (parity.py writes it), also each task's accuracy right after
training it, seed-paired A - B (mean and standard error), and the collapses: tasks that end their own training at
or below --chance-line (for two-class tasks, one class predicted for nearly every image, the symptom that opened
issue #16), counted per side over tasks and over seeds, with Fisher's exact test on the seeds (the independent
unit). scipy (installed with mlxtend) gives the t quantile and the exact test.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from scipy.stats import fisher_exact
from scipy.stats import t as student_t


def finals(record: dict) -> dict[int, float]:
    return dict(zip(record["seeds"], record["final"]))


def right_after_training(record: dict) -> dict[int, list[float]]:
    """Per seed, each task's accuracy measured right after training it: the diagonal of the accuracy matrix."""
    return {seed: [row[i] for i, row in enumerate(matrix)] for seed, matrix in zip(record["seeds"], record["accuracy"])}


def collapses(a: dict[int, list[float]], b: dict[int, list[float]], seeds: list[int], chance_line: float) -> dict:
    """Task trainings that end at chance level, per side, and whether A's seeds collapse more often than B's."""
    sides = {}
    for name, after in (("a", a), ("b", b)):
        tasks = {s: [t for t, acc in enumerate(after[s]) if acc <= chance_line] for s in seeds}
        sides[name] = {"collapsed_tasks": {s: t for s, t in tasks.items() if t},
                       "n_tasks": sum(len(after[s]) for s in seeds),
                       "n_collapsed_tasks": sum(map(len, tasks.values())),
                       "n_seeds_with_collapse": sum(bool(t) for t in tasks.values())}
    n = len(seeds)
    table = [[sides[x]["n_seeds_with_collapse"], n - sides[x]["n_seeds_with_collapse"]] for x in ("a", "b")]
    return {"chance_line": chance_line, **sides,
            "fisher_p_two_sided": float(fisher_exact(table).pvalue),
            "fisher_p_a_more": float(fisher_exact(table, alternative="greater").pvalue)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="runs/<side> folder of parity.py")
    parser.add_argument("b", type=Path, help="runs/<side> folder of parity.py")
    parser.add_argument("--method", default="bic")
    parser.add_argument("--tolerance", type=float, default=3.7, help="issue #16's tolerance for the method")
    parser.add_argument("--chance-line", type=float, default=60.0,
                        help="a task whose accuracy right after training it is at most this (%%) counts as collapsed")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for side in (args.a, args.b):
        if not (side / f"{args.method}.json").is_file():
            parser.error(f"no {args.method}.json in {side} (a runs/<side> folder that parity.py wrote)")
    record_a, record_b = (json.loads((side / f"{args.method}.json").read_text()) for side in (args.a, args.b))
    a, b = finals(record_a), finals(record_b)
    seeds = sorted(a.keys() & b.keys())
    if len(seeds) < 2:
        parser.error(f"{args.a} and {args.b} share {len(seeds)} seed(s) of {args.method}; two or more are needed")
    differences = [a[s] - b[s] for s in seeds]
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    se3 = sd / math.sqrt(3)
    miss = 2 * (1 - statistics.NormalDist(0, se3).cdf(args.tolerance))
    half_width = student_t.ppf(0.975, len(seeds) - 1) * sd / math.sqrt(len(seeds))
    interval = [mean - half_width, mean + half_width]
    lines = ["| seed | A | B | A - B |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {a[s]:.1f} | {b[s]:.1f} | {d:+.1f} |" for s, d in zip(seeds, differences)]
    lines.append(f"\nA = {args.a}, B = {args.b}, {args.method}, seeds {seeds[0]}-{seeds[-1]}: mean A - B {mean:+.1f}, "
                 f"sample std {sd:.1f}, SE of a three-seed mean difference {se3:.1f}; P(|three-seed mean difference| > "
                 f"{args.tolerance}) with true mean 0: {miss:.0%}; 95 % t-interval of the mean difference "
                 f"{interval[0]:+.1f} to {interval[1]:+.1f}")
    result = {"a": str(args.a), "b": str(args.b), "method": args.method, "seeds": seeds,
              "a_final": [a[s] for s in seeds], "b_final": [b[s] for s in seeds], "differences": differences,
              "mean": mean, "sample_std": sd, "se_three_seeds": se3, "tolerance": args.tolerance,
              "p_miss_three_seeds": miss, "t95_interval": interval}
    if "accuracy" in record_a and "accuracy" in record_b:
        after_a, after_b = right_after_training(record_a), right_after_training(record_b)
        per_task = []
        for task in range(len(after_a[seeds[0]])):
            d = [after_a[s][task] - after_b[s][task] for s in seeds]
            per_task.append({"task": task, "mean": statistics.fmean(d),
                             "standard_error": statistics.stdev(d) / math.sqrt(len(d))})
        result["right_after_training"] = per_task
        result["collapses"] = c = collapses(after_a, after_b, seeds, args.chance_line)
        lines.append("Each task right after training it, A - B, mean ± standard error: " + ", ".join(
            f"task {p['task']} {p['mean']:+.1f} ± {p['standard_error']:.1f}" for p in per_task))
        for x in ("a", "b"):
            where = "; ".join(f"seed {s} task{'s' * (len(t) > 1)} {', '.join(map(str, t))}"
                              for s, t in c[x]["collapsed_tasks"].items())
            lines.append(f"{x.upper()}: {c[x]['n_collapsed_tasks']} of {c[x]['n_tasks']} task trainings end at or "
                         f"below {args.chance_line:g} %, on {c[x]['n_seeds_with_collapse']} of {len(seeds)} seeds"
                         f"{f' ({where})' if where else ''}")
        lines.append(f"Fisher's exact test on seeds with a collapse: p {c['fisher_p_two_sided']:.2f} two-sided, "
                     f"{c['fisher_p_a_more']:.2f} one-sided (A more)")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
