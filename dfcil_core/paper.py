"""The paper's two result tables (ABD README / ABD_REFERENCE_SPEC.md §9), rebuilt from `results/`, with the
published numbers next to ours, a protocol card under each table, an extra-columns table and the figures.

Layout and published numbers live in one data file, `dfcil_core/published/abd_iccv2021.yaml`. One table set
per dataset (`config.dataset_id`): rows = the paper's methods, columns = the task counts of the configured
experiments of that dataset, each column showing ours (mean ± population std over seeds), the paper's value,
and the difference in units of the paper's std. A method or task count with no run yet reads "–".

A column may pool several experiments (e.g. baselines in one, ABD in another) only when they share the whole
protocol: every setting but the method and its hyperparameters must agree, otherwise the tables are refused
with the name of the differing setting. The check runs twice: on the config when the workflow is parsed
(`table_sets`), and on the summaries' recorded settings when the tables are written.

Torch-free at import (the Snakefile imports this module); matplotlib is imported only to draw.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import yaml

from dfcil_core.atomic import write_atomically, write_text_atomically
from dfcil_core.config import ConfigError, class_order_family, dataset_id, n_classes, run_settings
from dfcil_core.methods import GENERATIVE_METHODS, display_name
from dfcil_core.report import (_LATEX_ESCAPES, DIVERGED_MARK, DIVERGENCE_FOOTNOTE, check_code_versions, code_line,
                               diverged_seeds, divergence_note, common_settings, flatten, mean_std, read_summary)

PUBLISHED_FILE = Path(__file__).resolve().parent / "published" / "abd_iccv2021.yaml"
TABLES = ("no_coreset", "coreset")
EXTRAS = "extras"
FORMATS = ("md", "tex", "csv", "html")  # html: the same table and card, for `snakemake --report`
# Methods that write a `samples.png` grid of generated images into their task folders.
DASH = "–"
NOT_APPLICABLE = "n/a"
# Settings that may differ between the rows of one column: the method and its own hyperparameters.
METHOD_KEYS = ("method", "method_settings")


# --- published numbers ------------------------------------------------------------------------------------

def parse_mean_std(text) -> tuple[float, float]:
    """'43.9 ± 0.9' -> (43.9, 0.9)."""
    match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*±\s*(\d+(?:\.\d+)?)\s*", str(text))
    if not match:
        raise ConfigError(f"published value {text!r} is not 'mean ± std'")
    return float(match[1]), float(match[2])


def load_published(path: Path = PUBLISHED_FILE) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"published numbers unreadable: {path}: {e}") from None
    for name in TABLES:
        if name not in data.get("tables", {}):
            raise ConfigError(f"{path} lacks the layout of table {name!r}")
    return data


@dataclass
class PublishedSet:
    """What the paper reports for one dataset."""

    status: str  # "published", "not_transcribed" or "not_reported"
    note: str
    metric: str | None
    values: dict[str, dict[str, dict[int, tuple[float, float]]]]  # table -> method -> tasks -> (mean, std)

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
              for table in TABLES}
    source = data.get("source", {})
    return PublishedSet("published", f"{source.get('numbers', '')}; {source.get('statistic', '')}".strip("; "),
                        entry.get("metric"), values)


def sigma_difference(ours: float, published: tuple[float, float], min_std: float) -> float:
    """(ours − paper) in units of the paper's std; a printed std of 0.0 means below `min_std`."""
    return (ours - published[0]) / max(published[1], min_std)


# --- protocols -------------------------------------------------------------------------------------------

def protocol_of(settings: dict) -> dict[str, object]:
    """The flat settings that define a column's protocol: everything but the method and its hyperparameters."""
    return {key: value for key, value in flatten(settings).items()
            if key.split(".", 1)[0] not in METHOD_KEYS}


def first_difference(a: dict, b: dict) -> tuple[str, object, object] | None:
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            return key, a.get(key), b.get(key)
    return None


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
    """The configured experiments of one dataset, as the paper tables see them."""

    dataset: str
    columns: dict[int, list[str]]  # task count -> experiment names (sorted by task count)
    methods: list[str]  # configured methods, in config order

    def sample_columns(self, experiments: dict[str, dict]) -> list[int]:
        """Task counts whose experiments run a method that draws generated samples."""
        return [n for n, names in self.columns.items()
                if any(m in GENERATIVE_METHODS for name in names for m in experiments[name]["methods"])]


def table_sets(experiments: dict[str, dict], n_tasks: dict[str, int]) -> dict[str, TableSet]:
    """Group the configured experiments by dataset and task count; refuse a column of mixed protocols."""
    sets: dict[str, TableSet] = {}
    protocols: dict[tuple[str, int], tuple[str, dict]] = {}
    for name, exp in experiments.items():
        dataset = dataset_id(exp["dataset"])
        table_set = sets.setdefault(dataset, TableSet(dataset, {}, []))
        n = n_tasks[name]
        protocol = experiment_protocol(exp)
        if (dataset, n) in protocols:
            other, other_protocol = protocols[(dataset, n)]
            diff = first_difference(other_protocol, protocol)
            if diff:
                _refuse(dataset, n, f"experiments {other!r}", f"{name!r}", diff)
        else:
            protocols[(dataset, n)] = (name, protocol)
        table_set.columns.setdefault(n, []).append(name)
        table_set.methods += [m for m in exp["methods"] if m not in table_set.methods]
    for table_set in sets.values():
        table_set.columns = dict(sorted(table_set.columns.items()))
    return sets


# --- our numbers -----------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One method in one column: its runs (one per seed) and their statistics."""

    method: str
    runs: list[dict]

    @property
    def seeds(self) -> list[int]:
        return sorted(run["seed"] for run in self.runs)

    def stat(self, key: str) -> tuple[float, float] | None:
        values = [run.get(key) for run in self.runs]
        return None if not values or None in values else mean_std(values)

    @property
    def final(self) -> tuple[float, float]:
        return self.stat("final_accuracy")

    @property
    def settings(self) -> dict:
        return self.runs[0]["settings"]

    def hours_per_run(self) -> float:
        """The jobs' own timings: the sum over tasks of each task's wall time, mean over seeds. A task whose
        training ran in a stage shared between runs (`train_shared_stage`) and was only loaded by its job
        counts the training time the stage recorded, so that every run pays for all of its tasks."""
        def seconds(task: dict) -> float:
            return max(task.get("wall_seconds") or 0.0,
                       (task.get("train_seconds") or 0.0) + (task.get("end_task_seconds") or 0.0))
        return fmean(sum(seconds(task) for task in run["tasks"]) if run.get("tasks")
                     else run.get("wall_seconds_total", 0.0) for run in self.runs) / 3600

    def stored_memory(self) -> dict | None:
        """The last task's stored-memory record (seeds agree on it; it is None for runs that predate it)."""
        records = [run["tasks"][-1].get("stored_memory") for run in self.runs if run.get("tasks")]
        return records[0] if records and records[0] is not None else None

    def devices(self) -> list[str]:
        return sorted({str(run.get("device")) for run in self.runs})


@dataclass
class Column:
    n_tasks: int
    cells: dict[str, Cell] = field(default_factory=dict)
    experiments: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> dict | None:
        return protocol_of(next(iter(self.cells.values())).settings) if self.cells else None

    @property
    def seeds(self) -> list[int]:
        return sorted({seed for cell in self.cells.values() for seed in cell.seeds})


def read_existing(summaries: list[Path]) -> tuple[list[dict], list[Path]]:
    """The summaries that exist (a partial grid during a long run is normal) and the paths still missing."""
    present = [Path(p) for p in summaries if Path(p).is_file()]
    return [read_summary(p) for p in present], [Path(p) for p in summaries if not Path(p).is_file()]


def build_columns(runs: list[dict], dataset: str, tasks: list[int]) -> dict[int, Column]:
    """Runs grouped by task count and method; refuses runs of another dataset and mixed protocols."""
    columns = {n: Column(n) for n in sorted(set(tasks) | {run["n_tasks"] for run in runs})}
    first_of: dict[int, dict] = {}
    for run in sorted(runs, key=lambda r: (r["n_tasks"], r["experiment"], r["method"], r["seed"])):
        if dataset_id(run["settings"]["dataset"]) != dataset:
            raise ConfigError(f"{run['experiment']}/{run['method']}/seed{run['seed']} is a "
                              f"{dataset_id(run['settings']['dataset'])} run, not {dataset}")
        column = columns[run["n_tasks"]]
        reference = first_of.setdefault(run["n_tasks"], run)
        diff = first_difference(protocol_of(reference["settings"]), protocol_of(run["settings"]))
        if diff:
            _refuse(dataset, run["n_tasks"],
                    f"{reference['experiment']}/{reference['method']}/seed{reference['seed']}",
                    f"{run['experiment']}/{run['method']}/seed{run['seed']}", diff)
        column.cells.setdefault(run["method"], Cell(run["method"], [])).runs.append(run)
        if run["experiment"] not in column.experiments:
            column.experiments.append(run["experiment"])
    for column in columns.values():
        for method, cell in column.cells.items():
            common_settings(method, cell.runs)  # one method's seeds: same settings, no seed twice
        budgets = {cell.settings.get("method_settings", {}).get("memory_size") for cell in column.cells.values()}
        budgets -= {None, 0}
        if len(budgets) > 1:
            raise ConfigError(f"paper table {dataset}, {column.n_tasks} tasks: coreset methods differ in setting "
                              f"'method_settings.memory_size' ({sorted(budgets)}); refusing to compare "
                              "different memory budgets in one column")
    return columns


# --- formatting ------------------------------------------------------------------------------------------

def fmt(value: tuple[float, float] | None, missing: str = DASH) -> str:
    return missing if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"


def fmt_sigma(value: float | None, missing: str = DASH) -> str:
    return missing if value is None else f"{value:+.1f}σ"


_TEX_EXTRA = {"†": r"\dag{}", "×": r"$\times$", "Δ": r"$\Delta$", "σ": r"$\sigma$", "–": "--", "—": "---", "−": "-",
              "≤": r"$\leq$", "≥": r"$\geq$", "·": r"$\cdot$", "§": r"\S{}", "→": r"$\to$"}


def tex(text: str) -> str:
    """LaTeX-escape plain text, character by character (so an inserted escape is never escaped again)."""
    return "".join(_TEX_EXTRA.get(c) or _LATEX_ESCAPES.get(c, c) for c in str(text))


def markdown_table(header: list[str], rows: list[list[str]], align: str = "r") -> list[str]:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    separator = "|---|" + (("---:|" if align == "r" else "---|") * (len(header) - 1))
    return [line(header), separator, *(line(row) for row in rows)]


def html_page(title: str, intro: str, header: list[str], rows: list[list[str]], card: list[str]) -> str:
    from html import escape
    cells = lambda tag, row: "".join(f"<{tag}>{escape(c)}</{tag}>" for c in row)  # noqa: E731
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse} "
        "th,td{padding:2px 8px;border-bottom:1px solid #ccc;text-align:right} "
        "th:first-child,td:first-child{text-align:left}</style></head><body>",
        f"<h3>{escape(title)}</h3>", f"<p>{escape(intro)}</p>",
        f"<table><thead><tr>{cells('th', header)}</tr></thead><tbody>",
        *(f"<tr>{cells('td', row)}</tr>" for row in rows), "</tbody></table>",
        "<p><b>Protocol card</b></p><ul>", *(f"<li>{escape(item)}</li>" for item in card), "</ul>",
        "</body></html>", ""])


def csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def latex_tabular(colspec: str, header_lines: list[str], rows: list[list[str]], caption: str, label: str,
                  card: list[str]) -> str:
    """A booktabs table float; `header_lines` are complete LaTeX lines, `rows` cells already escaped."""
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *header_lines, r"\midrule",
             *(" & ".join(row) + r" \\" for row in rows), r"\bottomrule", r"\end{tabular}"]
    if card:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize", r"\textbf{Protocol card.}",
                  r"\begin{itemize}", *(rf"\item {item}" for item in card), r"\end{itemize}", r"\end{minipage}"]
    return "\n".join(lines + [r"\end{table}", ""])


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
    distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
    if len(distinct) == 1:
        return True, _value_text(next(iter(values.values())))
    return False, "; ".join(f"{_value_text(v)} ({n} tasks)" for n, v in values.items())


def protocol_card(dataset: str, table: str | None, columns: dict[int, Column], published: PublishedSet,
                  min_std: float, methods: list[str], label_of) -> list[str]:
    """The card under a table: items as plain text (Markdown adds '- ', LaTeX escapes and itemizes)."""
    computed = {n: c for n, c in columns.items() if c.cells}
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
        for method, cell in column.cells.items():
            size = cell.settings.get("method_settings", {}).get("memory_size")
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
    devices = sorted({d for c in computed.values() for cell in c.cells.values() for d in cell.devices()})
    card.append(f"Devices: {', '.join(devices)}; experiments: "
                + "; ".join(f"{', '.join(c.experiments)} ({n} tasks)" for n, c in computed.items()))
    for method in methods:
        per_key: dict[str, dict[int, object]] = {}
        for n, column in computed.items():
            if method in column.cells:
                for key, v in flatten(column.cells[method].settings.get("method_settings", {})).items():
                    per_key.setdefault(key, {})[n] = v
        if per_key:
            items = []
            for key, by_column in per_key.items():
                distinct = {json.dumps(v, sort_keys=True) for v in by_column.values()}
                items.append(f"{key}={_value_text(next(iter(by_column.values())))}" if len(distinct) == 1 else
                             f"{key}=" + "/".join(f"{_value_text(v)} ({n} tasks)" for n, v in by_column.items()))
            card.append(f"{label_of(method)} ({method}) settings: {', '.join(items)}")
    missing = [n for n, c in columns.items() if not c.cells]
    if missing:
        card.append(f"Not computed yet: {', '.join(map(str, missing))} tasks")
    runs = [run for c in computed.values() for m, cell in c.cells.items() if m in methods for run in cell.runs]
    diverged = [(n, m, diverged_seeds(cell.runs)) for n, c in computed.items() for m, cell in c.cells.items()
                if m in methods and diverged_seeds(cell.runs)]
    n_diverged = sum(len(seeds) for _, _, seeds in diverged)
    card.append(f"Diverged runs: {n_diverged} of {len(runs)}" + (
        f" ({DIVERGED_MARK} in the cells). " + DIVERGENCE_FOOTNOTE
        + "; ".join(divergence_note(f"{label_of(m)}, {n} tasks", seeds) for n, m, seeds in diverged)
        if diverged else ""))
    card.append(code_line(runs, label_of))
    return card


# --- the two paper tables --------------------------------------------------------------------------------

@dataclass
class PaperRow:
    method: str
    label: str
    cells: list[dict]  # per column: ours, n_seeds, published, sigma


def paper_rows(table: str, layout: dict, columns: dict[int, Column], published: PublishedSet,
               min_std: float) -> list[PaperRow]:
    rows = []
    for row in layout["tables"][table]["rows"]:
        cells = []
        for n, column in columns.items():
            cell = column.cells.get(row["method"])
            ours = cell.final if cell else None
            paper = published.get(table, row["method"], n)
            cells.append({"tasks": n, "ours": ours, "seeds": cell.seeds if cell else [],
                          "diverged": diverged_seeds(cell.runs) if cell else {},
                          "expected_seeds": len(column.seeds), "published": paper,
                          "sigma": sigma_difference(ours[0], paper, min_std) if ours and paper else None})
        rows.append(PaperRow(row["method"], row["label"], cells))
    return rows


def _ours_text(cell: dict) -> str:
    text = fmt(cell["ours"])
    if cell["ours"] and len(cell["seeds"]) < cell["expected_seeds"]:
        text += f" (n={len(cell['seeds'])})"
    if cell["diverged"]:
        text += f" {DIVERGED_MARK}"
    return text


def _paper_text(cell: dict, published: PublishedSet) -> str:
    if published.status != "published":
        return NOT_APPLICABLE
    return fmt(cell["published"], NOT_APPLICABLE)


def _sigma_text(cell: dict, published: PublishedSet) -> str:
    if published.status != "published" or cell["published"] is None:
        return NOT_APPLICABLE
    return fmt_sigma(cell["sigma"])


def write_paper_table(out_prefix: Path, dataset: str, table: str, layout: dict, columns: dict[int, Column],
                      published: PublishedSet, card: list[str]) -> None:
    min_std = float(layout.get("source", {}).get("min_std", 0.05))
    rows = paper_rows(table, layout, columns, published, min_std)
    title = layout["tables"][table]["title"]
    metric = f"final accuracy (%), top-{_top_k(columns)}"
    header = ["Method"] + [f"{n} tasks ({part})" for n in columns for part in ("ours", "paper", "Δ/σ")]
    body = [[row.label] + [text for cell in row.cells for text in (
        _ours_text(cell), _paper_text(cell, published), _sigma_text(cell, published))] for row in rows]
    heading = f"{dataset}: {title.lower()} — {metric}"
    intro = ("Ours: mean ± population std over seeds; paper: the published value; Δ/σ: (ours − paper) in "
             "units of the paper's std. '–': not computed (or not configured); 'n/a': not published.")
    markdown = [f"# {heading}", "", intro, "", *markdown_table(header, body), "", "**Protocol card**", "",
                *(f"- {item}" for item in card), ""]
    write_text_atomically(out_prefix.with_suffix(".md"), "\n".join(markdown))
    write_text_atomically(out_prefix.with_suffix(".html"), html_page(heading, intro, header, body, card))

    group = " & ".join(rf"\multicolumn{{3}}{{c}}{{{n} tasks}}" for n in columns)
    rules = " ".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(columns)))
    sub = " & ".join(r"Ours & Paper & $\Delta/\sigma$" for _ in columns)
    tex_rows = [[tex(row.label)] + [text for cell in row.cells for text in (
        tex(_ours_text(cell)), tex(_paper_text(cell, published)),
        tex(_sigma_text(cell, published)).replace(r"$\sigma$", ""))] for row in rows]
    label = "".join(c if c.isalnum() else "-" for c in f"{dataset}-{table}")
    write_text_atomically(out_prefix.with_suffix(".tex"), latex_tabular(
        "l" + "rrr" * len(columns), [rf" & {group} \\", rules, rf"Method & {sub} \\"], tex_rows,
        tex(f"{dataset}, {title.lower()}: {metric}, ours (mean ± population std over seeds) and the "
            "paper's; Δ/σ is the difference in units of the paper's std."),
        f"tab:paper-{label}", [tex(item) for item in card]))

    csv_rows = []
    for row in rows:
        for cell in row.cells:
            ours, paper = cell["ours"] or ("", ""), cell["published"] or ("", "")
            csv_rows.append([table, row.method, row.label, cell["tasks"], *ours, len(cell["seeds"]),
                             ";".join(map(str, cell["seeds"])), *paper,
                             "" if cell["sigma"] is None else cell["sigma"], published.status])
    write_text_atomically(out_prefix.with_suffix(".csv"), csv_text(
        ["table", "method", "label", "tasks", "ours_mean", "ours_std", "n_seeds", "seeds", "paper_mean",
         "paper_std", "delta_sigma", "published"], csv_rows))


def _top_k(columns: dict[int, Column]) -> int:
    for column in columns.values():
        if column.protocol:
            return column.protocol.get("dataset.top_k", 1)
    return 1


# --- the extra-columns table -----------------------------------------------------------------------------

def hours_label(columns: dict[int, Column]) -> str:
    devices = {d for c in columns.values() for cell in c.cells.values() for d in cell.devices()}
    on_gpu = devices and all(d not in ("cpu", "None", "mps") and not d.startswith("cpu") for d in devices)
    return "GPU-hours / run" if on_gpu else "device-hours / run"


def write_extras(out_prefix: Path, dataset: str, columns: dict[int, Column], methods: list[str], label_of,
                 card: list[str]) -> None:
    hours = hours_label(columns)
    header = ["Tasks", "Method", "Final acc. (%)", "Avg. incremental acc. (%)", "Forgetting (%)", hours,
              "Stored memory (bytes)", "mem (§7.2 units)", "Seeds"]
    rows, csv_rows = [], []
    for n, column in columns.items():
        order = [m for m in methods if m in column.cells] + [m for m in column.cells if m not in methods]
        for method in order:
            cell = column.cells[method]
            memory = cell.stored_memory()
            hours_value = cell.hours_per_run()
            rows.append([str(n), label_of(method), fmt(cell.final), fmt(cell.stat("average_incremental_accuracy")),
                         fmt(cell.stat("forgetting"), NOT_APPLICABLE), f"{hours_value:.3g}",
                         f"{memory['bytes']:,}" if memory else DASH,
                         f"{memory['reference_units']:,}" if memory else DASH, str(len(cell.seeds))])
            aia, forget = cell.stat("average_incremental_accuracy"), cell.stat("forgetting") or ("", "")
            csv_rows.append([n, method, label_of(method), *cell.final, *aia, *forget, hours_value,
                             memory["bytes"] if memory else "", memory["reference_units"] if memory else "",
                             json.dumps(memory["parameters"], sort_keys=True) if memory else "",
                             memory["coreset_images"] if memory else "", len(cell.seeds),
                             ";".join(map(str, cell.seeds)), ";".join(cell.devices())])
    note = (f"{hours}: the sum over tasks of each training job's wall time (or of the training time recorded by "
            "a stage shared between runs), mean over seeds. Stored memory: "
            "parameters of the model and of any generator/VAE as 4-byte floats plus coreset images at "
            "H×W×C bytes; mem: the reference's own count (parameters + coreset pixels, ABD_REFERENCE_SPEC.md §7.2).")
    heading = f"{dataset}: final accuracy, average incremental accuracy, forgetting, cost and memory"
    markdown = [f"# {heading}", "", note, "", *markdown_table(header, rows), "", "**Protocol card**", "",
                *(f"- {item}" for item in card), ""]
    write_text_atomically(out_prefix.with_suffix(".md"), "\n".join(markdown))
    write_text_atomically(out_prefix.with_suffix(".html"), html_page(heading, note, header, rows, card))
    write_text_atomically(out_prefix.with_suffix(".tex"), latex_tabular(
        "rl" + "r" * (len(header) - 2), [" & ".join(tex(h) for h in header) + r" \\"],
        [[tex(c) for c in row] for row in rows], tex(f"{dataset}: extra metrics. {note}"),
        f"tab:paper-{''.join(c if c.isalnum() else '-' for c in dataset)}-extras", [tex(item) for item in card]))
    write_text_atomically(out_prefix.with_suffix(".csv"), csv_text(
        ["tasks", "method", "label", "final_mean", "final_std", "aia_mean", "aia_std", "forgetting_mean",
         "forgetting_std", "hours_per_run", "stored_memory_bytes", "reference_mem_units", "parameters",
         "coreset_images", "n_seeds", "seeds", "devices"], csv_rows))


# --- entry points ----------------------------------------------------------------------------------------

def paper_tables(summaries: list[Path], dataset: str, tasks: list[int], methods: list[str], out_dir: Path,
                 published_file: Path = PUBLISHED_FILE, refuse_mixed_code: bool = False, log=print) -> None:
    """Write out_dir/{no_coreset,coreset,extras}.{md,tex,csv,html} from the summaries that exist."""
    layout = load_published(published_file)
    runs, missing = read_existing(summaries)
    check_code_versions(runs, refuse_mixed_code, f"paper tables of {dataset}")
    if missing:
        log(f"{len(missing)} of {len(summaries)} summaries not computed yet (their cells read '{DASH}'), "
            f"e.g. {missing[0]}")
    columns = build_columns(runs, dataset, tasks)
    published = published_for(layout, dataset)
    min_std = float(layout.get("source", {}).get("min_std", 0.05))
    all_methods = list(dict.fromkeys([*methods, *(m for c in columns.values() for m in c.cells)]))
    labels = {m: display_name(m) for m in all_methods}
    out_dir.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        paper_labels = {row["method"]: row["label"] for row in layout["tables"][table]["rows"]}
        card = protocol_card(dataset, table, columns, published, min_std, list(paper_labels),
                             lambda m: paper_labels.get(m, labels.get(m, m)))
        write_paper_table(out_dir / table, dataset, table, layout, columns, published, card)
    card = protocol_card(dataset, None, columns, published, min_std, all_methods, lambda m: labels.get(m, m))
    write_extras(out_dir / EXTRAS, dataset, columns, all_methods, lambda m: labels.get(m, m), card)


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


def plot_curves(summaries: list[Path], dataset: str, tasks: list[int], methods: list[str], png: Path) -> None:
    """Accuracy on the seen classes after each task, one panel per task count, one line per method (±std)."""
    runs, _ = read_existing(summaries)
    columns = build_columns(runs, dataset, tasks)
    all_methods = list(dict.fromkeys([*methods, *(m for c in columns.values() for m in c.cells)]))
    labels = {m: display_name(m) for m in all_methods}
    figure = _figure(4.6 * len(columns), 3.8)
    import matplotlib
    from matplotlib.ticker import MaxNLocator
    tab20 = matplotlib.colormaps["tab20"]
    colors = [tab20(2 * i) for i in range(10)] + [tab20(2 * i + 1) for i in range(10)]  # dark shades first
    for i, (n, column) in enumerate(columns.items()):
        axes = figure.add_subplot(1, len(columns), i + 1)
        if not column.cells:
            _empty(axes, f"{n} tasks: not computed yet")
            continue
        for k, method in enumerate(all_methods):
            if method not in column.cells:
                continue
            curves = [run["accuracy_global"] for run in column.cells[method].runs]
            stats = [mean_std(values) for values in zip(*curves)]
            x = range(1, len(stats) + 1)
            color = colors[k % 20]
            axes.plot(x, [m for m, _ in stats], marker="o", markersize=3, color=color, label=labels[method])
            axes.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.2,
                              linewidth=0)
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
    runs = [run for run in read_existing(summaries)[0] if run["method"] == method]
    columns = build_columns(runs, dataset, tasks)
    label = display_name(method)
    figure = _figure(4.4 * len(columns), 4.0)
    image = None
    for i, (n, column) in enumerate(columns.items()):
        axes = figure.add_subplot(1, len(columns), i + 1)
        if method not in column.cells:
            _empty(axes, f"{label}, {n} tasks: not computed yet")
            continue
        matrices = [run["accuracy_matrix"] for run in column.cells[method].runs]
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
        axes.set_title(f"{label}: {n} tasks ({len(column.cells[method].runs)} seeds)")
    if image is not None:
        figure.colorbar(image, ax=figure.axes, shrink=0.8, label="accuracy (%)")
    save_figure(figure, png)


def plot_samples(summaries: list[Path], dataset: str, n_tasks: int, png: Path) -> None:
    """The generator sample grids (`task<t>/samples.png`) of one task count: a row per generative method
    (its lowest seed), a column per task that left a grid."""
    from PIL import Image

    runs = [(Path(p), read_summary(Path(p))) for p in summaries if Path(p).is_file()]
    grids: dict[str, tuple[int, list[tuple[int, Path]]]] = {}  # method -> (seed, [(task, samples.png)])
    for path, run in sorted(runs, key=lambda pr: (pr[1]["method"], pr[1]["seed"])):
        if run["n_tasks"] != n_tasks or run["method"] in grids:
            continue
        found = [(t, path.parent / f"task{t}" / "samples.png") for t in range(n_tasks)]
        found = [(t, p) for t, p in found if p.is_file()]
        if found:
            grids[run["method"]] = (run["seed"], found)
    labels = {m: display_name(m) for m in grids}
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
                axes.set_ylabel(f"{labels[method]}\nseed {seed}", fontsize=9)
    figure.suptitle(f"{dataset}, {n_tasks} tasks: generated samples after each task", fontsize=10)
    save_figure(figure, png)
