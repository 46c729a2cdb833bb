"""The experiment and paper tables of a fixed results tree, byte for byte.

tests/golden/results holds the 36 run summaries of one demo run (config/config.yaml: experiment mnist5k-5task,
12 methods x 3 seeds) exactly as `dfcil summarize` wrote them; tests/golden/expected holds the tables that the
command lines of workflow/rules/aggregate.smk and paper.smk made from them. Two cases:

  demo      the tree as it is;
  variants  copies of the same summaries edited so that what the demo never shows is rendered too: a method
            missing from the paper tables (DGR), a cell with fewer seeds (E2E without seed 2), diverged runs
            (LwF seed 1, ABD seed 2), a second code version (Base seed 0), an undefined forgetting (UB), a
            dataset the paper reports (cifar100, so the published values and Δ/σ appear), a task count with
            no run (10), and GPU runs.

The figures (PNG, SVG) are left out: they depend on the matplotlib version, the tables only on the data.
After an intended change of the tables, regenerate the expected files with `python tests/test_golden_tables.py`
and review their diff.
"""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest

from dfcil_core.cli import main as dfcil

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPERIMENT = "mnist5k-5task"
# The demo's methods in config order (the order of the workflow's inputs, hence of the tables' rows).
METHODS = ("upper_bound", "base", "naive_rehearsal", "lwf", "lwf_mc", "lwf_coreset", "e2e", "bic", "dgr",
           "deep_inversion", "lwf_synthetic", "abd")
SEEDS = (0, 1, 2)
FIGURES = (".png", ".svg")


def summary_paths(results: Path) -> list[Path]:
    """Every run's summary.json in the workflow's order (methods, then seeds), whether it exists or not."""
    return [results / EXPERIMENT / method / f"seed{seed}" / "summary.json" for method in METHODS for seed in SEEDS]


def vary(summary: dict) -> dict | None:
    """The variants case's edit of one run's summary; None removes the run."""
    method, seed = summary["method"], summary["seed"]
    if method == "dgr" or (method, seed) == ("e2e", 2):
        return None
    summary["settings"]["dataset"]["name"] = "cifar100"
    summary["device"] = "cuda:0"
    if method == "upper_bound":
        summary["forgetting"] = None
    summary["diverged_tasks"] = {("lwf", 1): [3, 4], ("abd", 2): [4]}.get((method, seed), [])
    if (method, seed) == ("base", 0):
        summary["code_digests"] = ["0123456789abcdef"]
    return summary


CASES = {
    # name: (edit of each summary or None, paper-tables dataset, paper-tables task counts)
    "demo": (None, "mnist5k", [5]),
    "variants": (vary, "cifar100", [5, 10]),
}


def results_tree(case: str, root: Path) -> Path:
    """The case's results tree under `root`: the golden summaries, edited for the case."""
    edit = CASES[case][0]
    results = root / "results"
    for source, target in zip(summary_paths(GOLDEN / "results"), summary_paths(results)):
        summary = json.loads(source.read_text())
        if edit is not None:
            summary = edit(summary)
        if summary is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(summary, indent=1))
    return results


def make_tables(case: str, results: Path, out: Path) -> None:
    """The case's tables under out/experiment and out/paper, by the workflow's command lines."""
    _, dataset, tasks = CASES[case]
    summaries = [str(path) for path in summary_paths(results)]
    existing = [path for path in summaries if Path(path).is_file()]  # the experiment rule waits for all of them
    dfcil(["tables", *existing, "--out-prefix", str(out / "experiment")])
    dfcil(["paper-tables", *summaries, "--dataset", dataset, "--tasks", *map(str, tasks),
           "--methods", *METHODS, "--out-dir", str(out / "paper")])


def tables_in(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.suffix not in FIGURES)


@pytest.mark.parametrize("case", CASES)
def test_tables_equal_the_golden_files(case, tmp_path):
    out = tmp_path / "out"
    make_tables(case, results_tree(case, tmp_path), out)
    expected = GOLDEN / "expected" / case
    assert tables_in(out) == tables_in(expected)
    for name in tables_in(expected):
        made, wanted = (out / name).read_bytes(), (expected / name).read_bytes()
        diff = "".join(difflib.unified_diff(wanted.decode().splitlines(True), made.decode().splitlines(True),
                                            f"expected/{case}/{name}", f"made/{name}"))
        assert made == wanted, diff


def regenerate() -> None:
    """Rewrite tests/golden/expected with the installed code (only after an intended change of the tables)."""
    import tempfile
    for case in CASES:
        expected = GOLDEN / "expected" / case
        shutil.rmtree(expected, ignore_errors=True)
        with tempfile.TemporaryDirectory() as tmp:
            make_tables(case, results_tree(case, Path(tmp)), expected)
        for figure in (p for p in expected.rglob("*") if p.suffix in FIGURES):
            figure.unlink()


if __name__ == "__main__":
    regenerate()
