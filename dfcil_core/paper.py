"""A paper's result tables (ABD: its README's two tables, ABD_REFERENCE_SPEC.md §9; R-DFCIL: its 50-classes-first
protocol), rebuilt from `results/`, with the published numbers next to ours, a protocol card under each table, an
extra-columns table and the figures.

Each paper is one data file, `dfcil_core/published/<paper>.yaml`: its tables' layout and its published numbers. An
experiment names the paper it reproduces (`paper`, default ABD's). One table set per paper and dataset
(`config.dataset_id`): rows = the paper's methods, columns = the task counts of the configured experiments, each
column showing ours (mean ± population std over seeds), the paper's value, and the difference in units of the
paper's std. A method or task count with no run yet reads "–".

A column may pool several experiments (e.g. baselines in one, ABD in another) only when they share the whole
protocol: every setting but the method and its hyperparameters must agree, otherwise the tables are refused
with the name of the differing setting. The check runs twice: on the config when the workflow is parsed
(`table_sets`), and on the summaries' recorded settings when the tables are written.

Torch-free at import (the Snakefile imports this module); matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Callable

import yaml

from dfcil_core.atomic import write_atomically
from dfcil_core.config import (ConfigError, class_order_family, dataset_id, first_difference, flatten, n_classes,
                               run_settings)
from dfcil_core.methods import GENERATIVE_METHODS, display_name
from dfcil_core.report import plot_mean_std
from dfcil_core.results import (DIVERGED_MARK, DIVERGENCE_FOOTNOTE, METRICS, accuracy_curves, check_code_versions,
                                check_common_settings, code_line, distinct, divergence_note, first, mean_std_of,
                                mean_std_text, read_runs, seed_statistics, semicolon_list)
from dfcil_core.table import Table

if TYPE_CHECKING:
    import pandas as pd

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
DEFAULT_PAPER = "abd_iccv2021"  # an experiment without `paper` reproduces ABD's tables
EXTRAS = "extras"
FORMATS = ("md", "tex", "csv", "html")  # html: the same table and card, for `snakemake --report`
DASH = "–"
NOT_APPLICABLE = "n/a"
UNVERIFIED = "?"  # marks a published value that could not be checked against the paper itself
# Settings that may differ between the rows of one column: the method and its own hyperparameters.
METHOD_KEYS = ("method", "method_settings")


# --- published numbers ------------------------------------------------------------------------------------

def parse_mean_std(text) -> tuple[float, float]:
    """'43.9 ± 0.9' -> (43.9, 0.9)."""
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)\s*", str(text))
    if not match:
        raise ConfigError(f"published value {text!r} is not 'mean ± std'")
    return float(match[1]), float(match[2])


def published_file(paper: str) -> Path:
    return PUBLISHED_DIR / f"{paper}.yaml"


def load_published(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"published numbers unreadable: {path}: {e}") from None
    if not data.get("tables") or EXTRAS in data["tables"]:
        raise ConfigError(f"{path}: `tables` must name at least one table, and not {EXTRAS!r} (ours)")
    return data


@dataclass
class PublishedSet:
    """What the paper reports for one dataset."""

    status: str  # "published", "not_transcribed" or "not_reported"
    note: str
    metric: str | None
    values: dict[str, dict[str, dict[int, tuple[float, float]]]]  # table -> method -> tasks -> (mean, std)
    verified: bool = True  # false: numbers taken from a secondary source; every paper cell says so

    def get(self, table: str, method: str, n_tasks: int) -> tuple[float, float] | None:
        return self.values.get(table, {}).get(method, {}).get(n_tasks)


def published_for(data: dict, dataset: str) -> PublishedSet:
    entry = (data.get("published") or {}).get(dataset)
    if entry is None:
        return PublishedSet("not_reported", f"not applicable: the paper reports no {dataset} results", None, {})
    if "not_transcribed" in entry:
        return PublishedSet("not_transcribed", f"not transcribed: {entry['not_transcribed']}", None, {})
    values = {table: {method: {int(t): parse_mean_std(v) for t, v in cells.items()}
                      for method, cells in (entry.get(table) or {}).items()}
              for table in data["tables"]}
    source = data.get("source", {})
    note = f"{source.get('numbers', '')}; {source.get('statistic', '')}".strip("; ")
    if "unverified" in entry:
        note = f"{UNVERIFIED} unverified: {entry['unverified']}; {note}"
    return PublishedSet("published", note, entry.get("metric"), values, verified="unverified" not in entry)


def sigma_difference(ours: float, published: tuple[float, float], min_std: float) -> float:
    """(ours − paper) in units of the paper's std; a printed std of 0.0 means below `min_std`."""
    return (ours - published[0]) / max(published[1], min_std)


# --- protocols -------------------------------------------------------------------------------------------

def protocol_of(settings: dict) -> dict[str, object]:
    """The flat settings that define a column's protocol: everything but the method and its hyperparameters."""
    return {key: value for key, value in flatten(settings).items()
            if key.split(".", 1)[0] not in METHOD_KEYS}


def _refuse(dataset: str, n_tasks: int, what_a: str, what_b: str, diff: tuple[str, object, object]) -> None:
    key, va, vb = diff
    raise ConfigError(f"paper table {dataset}, {n_tasks} tasks: {what_a} and {what_b} differ in setting {key!r} "
                      f"({va!r} vs {vb!r}); refusing to put two protocols in one column (give one of them "
                      "other settings that make them identical, or run it from its own config file)")


def experiment_protocol(exp: dict) -> dict[str, object]:
    """An experiment's protocol from its config (no run needed): its run settings and its seeds."""
    return {**protocol_of(run_settings(exp, "")), "seeds": sorted(exp["seeds"])}


@dataclass
class TableSet:
    """The configured experiments of one dataset that reproduce one paper, as its tables see them."""

    paper: str
    dataset: str
    columns: dict[int, list[str]]  # task count -> experiment names (sorted by task count)
    methods: list[str]  # configured methods, in config order
    tables: list[str]  # the paper's tables (its data file's layout), without the extras table

    @property
    def id(self) -> str:
        """The folder under results/paper/: the dataset, followed by the paper unless it is ABD's."""
        return self.dataset if self.paper == DEFAULT_PAPER else f"{self.dataset}-{self.paper}"

    def sample_columns(self, experiments: dict[str, dict]) -> list[int]:
        """Task counts whose experiments run a method that draws generated samples."""
        return [n for n, names in self.columns.items()
                if any(m in GENERATIVE_METHODS for name in names for m in experiments[name]["methods"])]


def table_sets(experiments: dict[str, dict], n_tasks: dict[str, int]) -> dict[str, TableSet]:
    """Group the configured experiments by paper, dataset and task count (keyed by `TableSet.id`); refuse a
    column of mixed protocols."""
    sets: dict[str, TableSet] = {}
    protocols: dict[tuple[str, int], tuple[str, dict]] = {}
    for name, exp in experiments.items():
        paper = exp.get("paper", DEFAULT_PAPER)
        new = TableSet(paper, dataset_id(exp["dataset"]), {}, [], list(load_published(published_file(paper))["tables"]))
        table_set = sets.setdefault(new.id, new)
        n = n_tasks[name]
        protocol = experiment_protocol(exp)
        if (table_set.id, n) in protocols:
            other, other_protocol = protocols[(table_set.id, n)]
            diff = first_difference(other_protocol, protocol)
            if diff:
                _refuse(table_set.id, n, f"experiments {other!r}", f"{name!r}", diff)
        else:
            protocols[(table_set.id, n)] = (name, protocol)
        table_set.columns.setdefault(n, []).append(name)
        table_set.methods += [m for m in exp["methods"] if m not in table_set.methods]
    for table_set in sets.values():
        table_set.columns = dict(sorted(table_set.columns.items()))
    return sets


# --- our numbers -----------------------------------------------------------------------------------------

# Per cell (a method in a column), next to seed_statistics' own columns: what the tables and the card show.
CELL_COLUMNS = {"settings": ("settings", first), "stored_memory": ("stored_memory", first),
                "devices": ("device", distinct)}


@dataclass
class Column:
    """One task count: its runs, sorted by experiment, method and seed, and its cells, the runs' statistics per
    method (seed_statistics, indexed by method, methods in the order of the runs)."""

    n_tasks: int
    runs: pd.DataFrame
    cells: pd.DataFrame

    @property
    def computed(self) -> bool:
        return not self.runs.empty

    @property
    def protocol(self) -> dict | None:
        return protocol_of(self.runs.settings.iloc[0]) if self.computed else None

    @property
    def seeds(self) -> list[int]:
        return distinct(self.runs.seed)

    @property
    def experiments(self) -> list[str]:
        return list(dict.fromkeys(self.runs.experiment))

    def cell(self, method: str) -> dict | None:
        return self.cells.loc[method].to_dict() if method in self.cells.index else None


def read_existing(summaries: list[Path]) -> tuple[pd.DataFrame, list[Path]]:
    """The runs whose summaries exist (a partial grid during a long run is normal) and the paths still missing."""
    present = [Path(p) for p in summaries if Path(p).is_file()]
    return read_runs(present), [Path(p) for p in summaries if not Path(p).is_file()]


def _run_name(run) -> str:
    return f"{run.experiment}/{run.method}/seed{run.seed}"


def _check_dataset(runs: pd.DataFrame, dataset: str) -> None:
    datasets = runs.settings.map(lambda settings: dataset_id(settings["dataset"]))
    others = runs[datasets != dataset]
    if not others.empty:
        raise ConfigError(f"{_run_name(others.iloc[0])} is a {datasets[others.index[0]]} run, not {dataset}")


def _check_one_protocol_per_column(runs: pd.DataFrame, dataset: str) -> None:
    for n_tasks, column in runs.groupby("n_tasks"):
        reference = column.iloc[0]
        for run in column.itertuples():
            difference = first_difference(protocol_of(reference.settings), protocol_of(run.settings))
            if difference:
                _refuse(dataset, n_tasks, _run_name(reference), _run_name(run), difference)


def _check_one_memory_budget(column: Column, dataset: str) -> None:
    budgets = {settings.get("method_settings", {}).get("memory_size") for settings in column.cells.settings}
    budgets -= {None, 0}
    if len(budgets) > 1:
        raise ConfigError(f"paper table {dataset}, {column.n_tasks} tasks: coreset methods differ in setting "
                          f"'method_settings.memory_size' ({sorted(budgets)}); refusing to compare "
                          "different memory budgets in one column")


def build_columns(runs: pd.DataFrame, dataset: str, tasks: list[int]) -> dict[int, Column]:
    """Runs grouped by task count and method; refuses runs of another dataset, mixed protocols in a column,
    a method's seeds with different settings, and different memory budgets in a column."""
    runs = runs.sort_values(["n_tasks", "experiment", "method", "seed"], kind="stable", ignore_index=True)
    _check_dataset(runs, dataset)
    _check_one_protocol_per_column(runs, dataset)
    check_common_settings(runs, ["n_tasks", "method"])
    cells = seed_statistics(runs, ["n_tasks", "method"], [*METRICS, "job_seconds"], **CELL_COLUMNS)
    columns = {}
    for n_tasks in sorted({*tasks, *runs.n_tasks}):
        column = Column(int(n_tasks), runs[runs.n_tasks == n_tasks],
                        cells[cells.n_tasks == n_tasks].set_index("method"))
        _check_one_memory_budget(column, dataset)
        columns[column.n_tasks] = column
    return columns


def methods_shown(methods: list[str], columns: dict[int, Column]) -> list[str]:
    """The configured methods in their order, then any other method that has runs."""
    return list(dict.fromkeys([*methods, *(m for column in columns.values() for m in column.cells.index)]))


# --- the protocol card -----------------------------------------------------------------------------------

def _value_text(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _per_column(columns: dict[int, Column], key: str) -> tuple[bool, str]:
    """(whether all computed columns agree, the text: one value or 'value (N tasks); ...')."""
    values = {n: c.protocol.get(key) for n, c in columns.items() if c.protocol is not None}
    if not values:
        return True, DASH
    distinct_values = {json.dumps(v, sort_keys=True) for v in values.values()}
    if len(distinct_values) == 1:
        return True, _value_text(next(iter(values.values())))
    return False, "; ".join(f"{_value_text(v)} ({n} tasks)" for n, v in values.items())


def _method_settings_line(method: str, computed: dict[int, Column], label_of) -> str | None:
    """'<label> (<method>) settings: key=value, ...', a value per column where the columns differ."""
    per_key: dict[str, dict[int, object]] = {}
    for n, column in computed.items():
        if method in column.cells.index:
            for key, v in flatten(column.cells.settings[method].get("method_settings", {})).items():
                per_key.setdefault(key, {})[n] = v
    if not per_key:
        return None
    items = []
    for key, by_column in per_key.items():
        distinct_values = {json.dumps(v, sort_keys=True) for v in by_column.values()}
        items.append(f"{key}={_value_text(next(iter(by_column.values())))}" if len(distinct_values) == 1 else
                     f"{key}=" + "/".join(f"{_value_text(v)} ({n} tasks)" for n, v in by_column.items()))
    return f"{label_of(method)} ({method}) settings: {', '.join(items)}"


def _trust_lines(runs: pd.DataFrame, computed: dict[int, Column], methods: list[str], label_of) -> list[str]:
    """The diverged runs among the shown methods' and the code that made them."""
    runs = runs[runs.method.isin(methods)]
    diverged = [(n, method, seeds) for n, column in computed.items() for method, seeds in column.cells.diverged.items()
                if method in methods and seeds]
    n_diverged = sum(len(seeds) for _, _, seeds in diverged)
    return [f"Diverged runs: {n_diverged} of {len(runs)}" + (
        f" ({DIVERGED_MARK} in the cells). " + DIVERGENCE_FOOTNOTE
        + "; ".join(divergence_note(f"{label_of(m)}, {n} tasks", seeds) for n, m, seeds in diverged)
        if diverged else ""), code_line(runs, label_of)]


def protocol_card(dataset: str, table: str | None, runs: pd.DataFrame, columns: dict[int, Column],
                  published: PublishedSet, min_std: float, methods: list[str], label_of) -> list[str]:
    """The card under a table: items as plain text (the Table renders them)."""
    computed = {n: c for n, c in columns.items() if c.computed}
    if not computed:
        return [f"Dataset: {dataset}. No run has finished yet: every cell reads '{DASH}'."]

    def value(key):
        return _per_column(computed, key)[1]

    any_settings = next(iter(computed.values())).protocol
    dataset_settings = {k.split(".", 1)[1]: v for k, v in any_settings.items() if k.startswith("dataset.")}
    family = class_order_family(dataset_settings)
    order_text = ("Python random.seed(seed) shuffle: one class order per seed" if family == "python_random"
                  else "numpy seed 1993 shuffle: the same order for every seed")
    top_k = dataset_settings.get("top_k", 1)
    extra = ", ".join(f"{k}={_value_text(v)}" for k, v in dataset_settings.items() if k != "name")
    splits = "; ".join(
        f"{n} tasks = {c.protocol['first_split']} classes, then {c.protocol['other_split']} per task"
        + (f" (max_tasks {c.protocol['max_tasks']})" if c.protocol.get("max_tasks") else "")
        for n, c in computed.items())
    card = [
        f"Dataset: {dataset}, {n_classes(dataset_settings)} classes" + (f" ({extra})" if extra else "")
        + f"; splits: {splits}",
        f"Class orders: {order_text} ({family}); seeds: "
        + "; ".join(f"{', '.join(map(str, c.seeds))} ({n} tasks)" for n, c in computed.items()),
        "Backbone: " + ", ".join(f"{k.split('.', 1)[1]}={_per_column(computed, k)[1]}"
                                 for k in any_settings if k.startswith("model.")),
        f"Training per task: {value('train.epochs')} epochs, batch size {value('train.batch_size')}, "
        f"SGD lr {value('train.lr')} (x0.1 at epochs {value('train.lr_milestones')}), momentum "
        f"{value('train.momentum')}, weight decay {value('train.weight_decay')}; augmentation "
        f"{value('augment')} (crop padding {value('crop_padding')}, horizontal flip {value('horizontal_flip')})",
    ]
    other = [k for k in any_settings if k.split(".", 1)[0] not in ("dataset", "model", "train") and k not in (
        "first_split", "other_split", "max_tasks", "augment", "crop_padding", "horizontal_flip")]
    other += [k for k in any_settings if k.startswith("train.") and k not in (
        "train.epochs", "train.batch_size", "train.lr", "train.lr_milestones", "train.momentum",
        "train.weight_decay")]
    if other:
        card.append("Other settings: " + ", ".join(f"{k}={value(k)}" for k in other))
    budgets = {}
    for column in computed.values():
        for method, settings in column.cells.settings.items():
            size = settings.get("method_settings", {}).get("memory_size")
            if size and method in methods:
                budgets[label_of(method)] = size
    card.append("Memory budget: " + (", ".join(f"{m} {s} images" for m, s in budgets.items()) + "; no stored "
                                     "images for the other methods" if budgets else "no stored images"))
    card.append(f"Metric: final accuracy (%), top-{top_k}: after the last task, the mean over tasks of the "
                "accuracy on each task's test set, argmax over all classes seen so far; mean ± population std "
                "over seeds" + (f"; Δ/σ = (ours − paper) / paper's std, the std floored at {min_std}"
                                if table else ""))
    if table:
        card.append(f"Published: {published.note}")
    devices = distinct(d for c in computed.values() for cell_devices in c.cells.devices for d in cell_devices)
    card.append(f"Devices: {', '.join(devices)}; experiments: "
                + "; ".join(f"{', '.join(c.experiments)} ({n} tasks)" for n, c in computed.items()))
    card += filter(None, (_method_settings_line(method, computed, label_of) for method in methods))
    missing = [n for n, c in columns.items() if not c.computed]
    if missing:
        card.append(f"Not computed yet: {', '.join(map(str, missing))} tasks")
    return card + _trust_lines(runs, computed, methods, label_of)


# --- the two paper tables --------------------------------------------------------------------------------

PAPER_CSV_COLUMNS = ["table", "method", "label", "tasks", "ours_mean", "ours_std", "n_seeds", "seeds", "paper_mean",
                     "paper_std", "delta_sigma", "published"]
PAPER_INTRO = ("Ours: mean ± population std over seeds; paper: the published value; Δ/σ: (ours − paper) in "
               "units of the paper's std. '–': not computed (or not configured); 'n/a': not published.")


def paper_cells(table: str, layout: dict, columns: dict[int, Column], published: PublishedSet,
                min_std: float) -> list[dict]:
    """One record per row of the table's layout and column: ours, its seeds and diverged seeds, the seeds the
    column has, the published value and the difference in units of its std."""
    cells = []
    for row in layout["tables"][table]["rows"]:
        for n, column in columns.items():
            cell = column.cell(row["method"])
            ours = mean_std_of(cell, "final_accuracy") if cell else None
            paper = published.get(table, row["method"], n)
            cells.append({"method": row["method"], "label": row["label"], "tasks": n, "ours": ours,
                          "seeds": cell["seeds"] if cell else [], "diverged": cell["diverged"] if cell else {},
                          "expected_seeds": len(column.seeds), "published": paper,
                          "sigma": sigma_difference(ours[0], paper, min_std) if ours and paper else None})
    return cells


def _ours_text(cell: dict) -> str:
    text = mean_std_text(cell["ours"], DASH)
    if cell["ours"] and len(cell["seeds"]) < cell["expected_seeds"]:
        text += f" (n={len(cell['seeds'])})"
    if cell["diverged"]:
        text += f" {DIVERGED_MARK}"
    return text


def _paper_text(cell: dict, published: PublishedSet) -> str:
    if published.status != "published":
        return NOT_APPLICABLE
    text = mean_std_text(cell["published"], NOT_APPLICABLE)
    return text if published.verified or cell["published"] is None else f"{text} {UNVERIFIED}"


def _sigma_text(cell: dict, published: PublishedSet) -> str:
    if published.status != "published" or cell["published"] is None:
        return NOT_APPLICABLE
    return DASH if cell["sigma"] is None else f"{cell['sigma']:+.1f}σ"


def _csv_record(table: str, cell: dict, published: PublishedSet) -> list:
    return [table, cell["method"], cell["label"], cell["tasks"], *(cell["ours"] or ("", "")), len(cell["seeds"]),
            semicolon_list(cell["seeds"]), *(cell["published"] or ("", "")),
            "" if cell["sigma"] is None else cell["sigma"], published.status if published.verified else "unverified"]


def paper_table(dataset: str, table: str, layout: dict, columns: dict[int, Column], published: PublishedSet,
                card: list[str]) -> Table:
    import pandas as pd
    cells = paper_cells(table, layout, columns, published, float(layout.get("source", {}).get("min_std", 0.05)))
    rows: dict[str, list[str]] = {}
    for cell in cells:
        rows.setdefault(cell["method"], [cell["label"]]).extend(
            [_ours_text(cell), _paper_text(cell, published), _sigma_text(cell, published)])
    title = layout["tables"][table]["title"].lower()
    metric = f"final accuracy (%), top-{_top_k(columns)}"
    group = " & ".join(rf"\multicolumn{{3}}{{c}}{{{n} tasks}}" for n in columns)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(columns)))
    sub = " & ".join(r"Ours & Paper & $\Delta/\sigma$" for _ in columns)
    return Table(
        title=f"{dataset}: {title} — {metric}",
        header=["Method"] + [f"{n} tasks ({part})" for n in columns for part in ("ours", "paper", "Δ/σ")],
        rows=list(rows.values()),
        data=pd.DataFrame([_csv_record(table, cell, published) for cell in cells], columns=PAPER_CSV_COLUMNS),
        caption=f"{dataset}, {title}: {metric}, ours (mean ± population std over seeds) and the paper's; Δ/σ is "
                "the difference in units of the paper's std.",
        label=f"paper-{dataset}-{table}", colspec="l" + "rrr" * len(columns), intro=PAPER_INTRO, card=card,
        latex_header=[rf" & {group} \\", rules, rf"Method & {sub} \\"], latex_omits="σ")


def _top_k(columns: dict[int, Column]) -> int:
    for column in columns.values():
        if column.protocol:
            return column.protocol.get("dataset.top_k", 1)
    return 1


# --- the extra-columns table -----------------------------------------------------------------------------

EXTRAS_CSV_COLUMNS = ["tasks", "method", "label", "final_mean", "final_std", "aia_mean", "aia_std", "forgetting_mean",
                      "forgetting_std", "hours_per_run", "stored_memory_bytes", "reference_mem_units", "parameters",
                      "coreset_images", "n_seeds", "seeds", "devices"]


def hours_label(columns: dict[int, Column]) -> str:
    devices = {d for c in columns.values() for cell_devices in c.cells.devices for d in cell_devices}
    on_gpu = devices and all(d not in ("cpu", "None", "mps") and not d.startswith("cpu") for d in devices)
    return "GPU-hours / run" if on_gpu else "device-hours / run"


def _extras_row(n: int, label: str, cell: dict) -> list[str]:
    memory = cell["stored_memory"]
    final, aia, forgetting = (mean_std_of(cell, metric) for metric in METRICS)
    return [str(n), label, mean_std_text(final, DASH), mean_std_text(aia, DASH),
            mean_std_text(forgetting, NOT_APPLICABLE), f"{cell['job_seconds_mean'] / 3600:.3g}",
            f"{memory['bytes']:,}" if memory else DASH, f"{memory['reference_units']:,}" if memory else DASH,
            str(len(cell["seeds"]))]


def _extras_csv_record(n: int, method: str, label: str, cell: dict) -> list:
    memory = cell["stored_memory"] or {}
    final, aia, forgetting = (mean_std_of(cell, metric) for metric in METRICS)
    return [n, method, label, *final, *aia, *(forgetting or ("", "")), cell["job_seconds_mean"] / 3600,
            memory.get("bytes", ""), memory.get("reference_units", ""),
            json.dumps(memory["parameters"], sort_keys=True) if memory else "", memory.get("coreset_images", ""),
            len(cell["seeds"]), semicolon_list(cell["seeds"]), semicolon_list(cell["devices"])]


def extras_table(dataset: str, columns: dict[int, Column], methods: list[str], label_of, card: list[str]) -> Table:
    import pandas as pd
    hours = hours_label(columns)
    header = ["Tasks", "Method", "Final acc. (%)", "Avg. incremental acc. (%)", "Forgetting (%)", hours,
              "Stored memory (bytes)", "mem (§7.2 units)", "Seeds"]
    rows, records = [], []
    for n, column in columns.items():
        for method in [m for m in methods if m in column.cells.index] + [m for m in column.cells.index
                                                                         if m not in methods]:
            rows.append(_extras_row(n, label_of(method), column.cell(method)))
            records.append(_extras_csv_record(n, method, label_of(method), column.cell(method)))
    note = (f"{hours}: the sum over tasks of each training job's wall time (or of the training time recorded by "
            "a stage shared between runs), mean over seeds. Stored memory: "
            "parameters of the model and of any generator/VAE as 4-byte floats plus coreset images at "
            "H×W×C bytes; mem: the reference's own count (parameters + coreset pixels, ABD_REFERENCE_SPEC.md §7.2).")
    return Table(title=f"{dataset}: final accuracy, average incremental accuracy, forgetting, cost and memory",
                 header=header, rows=rows, data=pd.DataFrame(records, columns=EXTRAS_CSV_COLUMNS),
                 caption=f"{dataset}: extra metrics. {note}", label=f"paper-{dataset}-extras",
                 colspec="rl" + "r" * (len(header) - 2), intro=note, card=card)


# --- entry points ----------------------------------------------------------------------------------------

def paper_tables(summaries: list[Path], dataset: str, tasks: list[int], methods: list[str], out_dir: Path,
                 paper: str = DEFAULT_PAPER, tables: list[str] | None = None, refuse_mixed_code: bool = False,
                 log=print) -> None:
    """Write out_dir/<table>.{md,tex,csv,html} from the summaries that exist, for the paper's tables and the
    extras table (`tables`: only these)."""
    layout = load_published(published_file(paper))
    tables = tables or [*layout["tables"], EXTRAS]
    unknown = sorted(set(tables) - {*layout["tables"], EXTRAS})
    if unknown:
        raise ConfigError(f"paper {paper!r} has no table(s) {unknown}; its tables: {[*layout['tables'], EXTRAS]}")
    runs, missing = read_existing(summaries)
    check_code_versions(runs, refuse_mixed_code, f"paper tables of {dataset}")
    if missing:
        log(f"{len(missing)} of {len(summaries)} summaries not computed yet (their cells read '{DASH}'), "
            f"e.g. {missing[0]}")
    columns = build_columns(runs, dataset, tasks)
    published = published_for(layout, dataset)
    min_std = float(layout.get("source", {}).get("min_std", 0.05))
    for table in [t for t in layout["tables"] if t in tables]:
        paper_labels = {row["method"]: row["label"] for row in layout["tables"][table]["rows"]}
        card = protocol_card(dataset, table, runs, columns, published, min_std, list(paper_labels),
                             lambda m: paper_labels.get(m) or display_name(m))
        paper_table(dataset, table, layout, columns, published, card).write(out_dir / table, FORMATS)
    if EXTRAS in tables:
        shown = methods_shown(methods, columns)
        card = protocol_card(dataset, None, runs, columns, published, min_std, shown, display_name)
        extras_table(dataset, columns, shown, display_name, card).write(out_dir / EXTRAS, FORMATS)

# --- figures ---------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, png: Path) -> None:
    """PNG and an SVG of the same stem; no software/date metadata, so the files depend on the data only."""
    import matplotlib
    for path, fmt_, meta in ((png, "png", {"Software": None}), (png.with_suffix(".svg"), "svg", {"Date": None})):
        with matplotlib.rc_context({"svg.hashsalt": "dfcil"}):
            write_atomically(path, lambda tmp: figure.savefig(tmp, format=fmt_, metadata=meta))


def _empty(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, fontsize=9, wrap=True)
    axes.set_xticks([])
    axes.set_yticks([])


def _column_panels(figure, columns: dict[int, Column], not_computed: Callable[[int], str]):
    """A panel per column, left to right: yields (axes, task count, column) for the computed columns and writes
    `not_computed(task count)` into the others."""
    for i, (n, column) in enumerate(columns.items()):
        axes = figure.add_subplot(1, len(columns), i + 1)
        if column.computed:
            yield axes, n, column
        else:
            _empty(axes, not_computed(n))


def plot_curves(summaries: list[Path], dataset: str, tasks: list[int], methods: list[str], png: Path) -> None:
    """Accuracy on the seen classes after each task, one panel per task count, one line per method (±std)."""
    runs, _ = read_existing(summaries)
    columns = build_columns(runs, dataset, tasks)
    shown = methods_shown(methods, columns)
    figure = _figure(4.6 * len(columns), 3.8)
    import matplotlib
    from matplotlib.ticker import MaxNLocator
    tab20 = matplotlib.colormaps["tab20"]
    colors = [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]  # dark shades first
    for axes, n, column in _column_panels(figure, columns, lambda n: f"{n} tasks: not computed yet"):
        curves = accuracy_curves(column.runs, ["method"])
        for k, method in enumerate(shown):
            curve = curves[curves.method == method]
            if not curve.empty:
                plot_mean_std(axes, curve, markersize=3, color=colors[k % 20], label=display_name(method))
        axes.set_title(f"{dataset}: {n} tasks")
        axes.set_xlabel("Tasks trained")
        axes.set_ylabel(f"Accuracy on seen classes (%, top-{column.protocol.get('dataset.top_k', 1)})")
        axes.set_ylim(0, 100)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    save_figure(figure, png)


def plot_matrix(summaries: list[Path], dataset: str, tasks: list[int], method: str, png: Path) -> None:
    """A method's accuracy matrix acc[j][i] (mean over seeds) as a heatmap, one panel per task count."""
    runs, _ = read_existing(summaries)
    columns = build_columns(runs[runs.method == method], dataset, tasks)
    label = display_name(method)
    figure = _figure(4.4 * len(columns), 4.0)
    image = None
    for axes, n, column in _column_panels(figure, columns, lambda n: f"{label}, {n} tasks: not computed yet"):
        matrices = [summary["accuracy_matrix"] for summary in column.runs.summary]
        mean = [[math.nan if matrices[0][j][k] is None else fmean(m[j][k] for m in matrices) for k in range(n)]
                for j in range(n)]
        image = axes.imshow(mean, vmin=0, vmax=100, cmap="viridis", origin="upper")
        if n <= 10:
            for j in range(n):
                for k in range(j, n):
                    axes.text(k, j, f"{mean[j][k]:.0f}", ha="center", va="center", fontsize=7,
                              color="white" if mean[j][k] < 60 else "black")
        ticks = list(range(0, n, max(1, n // 10)))
        axes.set_xticks(ticks, [str(t + 1) for t in ticks])
        axes.set_yticks(ticks, [str(t + 1) for t in ticks])
        axes.set_xlabel("after training task i")
        axes.set_ylabel("accuracy on task j")
        axes.set_title(f"{label}: {n} tasks ({len(column.runs)} seeds)")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="accuracy (%)")
    save_figure(figure, png)


def plot_samples(summaries: list[Path], dataset: str, n_tasks: int, png: Path) -> None:
    """The generator sample grids (`task<t>/samples.png`) of one task count: a row per generative method
    (its lowest seed), a column per task that left a grid."""
    from PIL import Image

    runs, _ = read_existing(summaries)
    grids: dict[str, tuple[int, list[tuple[int, Path]]]] = {}  # method -> (seed, [(task, samples.png)])
    for run in runs.sort_values(["method", "seed"]).itertuples():
        if run.n_tasks != n_tasks or run.method in grids:
            continue
        found = [(t, run.path.parent / f"task{t}" / "samples.png") for t in range(n_tasks)]
        found = [(t, p) for t, p in found if p.is_file()]
        if found:
            grids[run.method] = (run.seed, found)
    if not grids:
        figure = _figure(6, 2)
        _empty(figure.add_subplot(), f"{dataset}, {n_tasks} tasks: no generator samples yet")
        save_figure(figure, png)
        return
    n_cols = max(len(found) for _, found in grids.values())
    figure = _figure(max(6.0, 1.9 * n_cols + 1), 2.0 * len(grids) + 0.4)
    for r, (method, (seed, found)) in enumerate(grids.items()):
        for c, (t, path) in enumerate(found):
            axes = figure.add_subplot(len(grids), n_cols, r * n_cols + c + 1)
            with Image.open(path) as img:
                axes.imshow(img.convert("RGB"))
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_title(f"after task {t + 1}", fontsize=8)
            if c == 0:
                axes.set_ylabel(f"{display_name(method)}\nseed {seed}", fontsize=9)
    figure.suptitle(f"{dataset}, {n_tasks} tasks: generated samples after each task", fontsize=10)
    save_figure(figure, png)
