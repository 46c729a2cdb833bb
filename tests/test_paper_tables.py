"""The paper's tables from a hand-made results/ tree: our values, published values, differences in units of the
published std, dashes, the protocol card, refusals of mixed protocols, the figures, and the workflow wiring."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from dfcil_core import paper
from dfcil_core.config import ConfigError, experiments

from test_workflow import REPO, snakemake

SETTINGS = {"dataset": {"name": "cifar100"}, "model": {"name": "resnet32", "blocks_per_stage": 5, "width": 16},
            "train": {"epochs": 250, "lr": 0.1, "lr_milestones": [100, 150, 200], "batch_size": 128,
                      "momentum": 0.9, "weight_decay": 0.0002},
            "max_tasks": None, "augment": True, "crop_padding": 4}
METHOD_SETTINGS = {"abd": {"mu": 0.1, "power_iters": 10000}, "naive_rehearsal": {"memory_size": 2000},
                   "lwf": {"mu": 1.0}}
MEMORY = {"parameters": {"model": 470004}, "coreset_images": 0, "image_bytes": 3072,
          "bytes": 4 * 470004, "reference_units": 470004}


def write_summary(root: Path, experiment: str, method: str, seed: int, n_tasks: int, final: float,
                  device: str = "cpu", **changes) -> Path:
    """A summary.json as summarize_run writes it, with a made-up accuracy matrix ending at `final`."""
    matrix = [[None if j > i else 90.0 - 10 * (i - j) for i in range(n_tasks)] for j in range(n_tasks)]
    for j in range(n_tasks):
        matrix[j][n_tasks - 1] = final
    settings = json.loads(json.dumps(SETTINGS))
    for key, value in changes.items():  # "train.epochs" -> settings["train"]["epochs"]
        *parents, leaf = key.split(".")
        target = settings
        for part in parents:
            target = target[part]
        target[leaf] = value
    split = 100 // n_tasks
    settings |= {"first_split": split, "other_split": split, "method": method,
                 "method_settings": METHOD_SETTINGS.get(method, {})}
    summary = {
        "experiment": experiment, "method": method, "seed": seed, "n_tasks": n_tasks,
        "accuracy_matrix": matrix,
        "accuracy_global": [sum(matrix[j][i] for j in range(i + 1)) / (i + 1) for i in range(n_tasks)],
        "final_accuracy": final, "average_incremental_accuracy": final + 10, "forgetting": 20.0 + seed,
        "wall_seconds_total": 1800.0 * n_tasks, "device": device, "settings": settings,
        "tasks": [{"task": t, "wall_seconds": 1800.0, "stored_memory": MEMORY} for t in range(n_tasks)],
    }
    path = root / experiment / method / f"seed{seed}" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


# Final accuracies per (method, task count) and seed 0, 1, 2.
FINALS = {("upper_bound", 5): (69.5, 69.7, 69.9), ("abd", 5): (41.0, 42.0, 43.0),
          ("base", 5): (16.0, 16.4, 16.8), ("lwf", 10): (9.25, 9.35, 9.45), ("naive_rehearsal", 10): (24, 25, 26)}


def write_grid(root: Path, device: str = "cpu") -> list[Path]:
    paths = []
    for (method, n), finals in FINALS.items():
        for seed, final in enumerate(finals):
            paths.append(write_summary(root, f"cifar100-{n}task", method, seed, n, final, device))
    # Configured but not computed yet: a partial grid during a long run.
    paths.append(root / "cifar100-20task" / "base" / "seed0" / "summary.json")
    return paths


def make_tables(tmp_path, dataset="cifar100", device="cpu", paths=None):
    paths = paths if paths is not None else write_grid(tmp_path / "results", device)
    out = tmp_path / "paper" / dataset
    paper.paper_tables(paths, dataset, [5, 10, 20], ["upper_bound", "base", "lwf", "abd", "naive_rehearsal"],
                       out, log=lambda msg: None)
    return out


def rows_of(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| Method"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_cells_hold_ours_published_and_sigma_difference(tmp_path):
    out = make_tables(tmp_path)
    rows = rows_of((out / "no_coreset.md").read_text())
    # Columns per task count (5, 10, 20): ours, paper, difference / paper std.
    assert rows["ABD"][:3] == ["42.0 ± 0.8", "43.9 ± 0.9", "-2.1σ"]  # (42.0 - 43.9) / 0.9
    assert rows["UB"][:3] == ["69.7 ± 0.2", "69.9 ± 0.2", "-1.0σ"]
    # The paper prints LwF 10 tasks as 9.2 ± 0.0: the std is floored at 0.05 -> (9.35 - 9.2) / 0.05.
    assert rows["LwF"][3:6] == ["9.3 ± 0.1", "9.2 ± 0.0", "+3.0σ"]
    # Not configured (DGR) or not computed yet (20 tasks): dashes next to the published value.
    assert rows["DGR"] == ["–", "14.4 ± 0.4", "–", "–", "8.1 ± 0.1", "–", "–", "4.1 ± 0.3", "–"]
    assert rows["Base"][6:] == ["–", "4.4 ± 0.3", "–"]
    coreset = rows_of((out / "coreset.md").read_text())
    assert coreset["Naive Rehearsal"][3:6] == ["25.0 ± 0.8", "24.0 ± 1.0", "+1.0σ"]
    assert coreset["ABD (no coreset)"][:3] == rows["ABD"][:3]
    assert list(coreset) == ["UB", "Naive Rehearsal", "LwF", "E2E", "BiC", "ABD (no coreset)"]
    assert list(rows) == ["UB", "Base", "LwF", "LwF.MC", "DGR", "DeepInversion", "ABD", "R-DFCIL (later work)"]


def test_csv_has_one_row_per_cell_with_exact_values(tmp_path):
    out = make_tables(tmp_path)
    with open(out / "no_coreset.csv") as handle:
        rows = {(r["method"], int(r["tasks"])): r for r in csv.DictReader(handle)}
    abd = rows[("abd", 5)]
    assert float(abd["ours_mean"]) == pytest.approx(42.0)
    assert float(abd["ours_std"]) == pytest.approx((2 / 3) ** 0.5)
    assert (float(abd["paper_mean"]), float(abd["paper_std"])) == (43.9, 0.9)
    assert float(abd["delta_sigma"]) == pytest.approx((42.0 - 43.9) / 0.9)
    assert (abd["n_seeds"], abd["seeds"], abd["published"]) == ("3", "0;1;2", "published")
    assert rows[("dgr", 10)]["ours_mean"] == "" and rows[("dgr", 10)]["paper_mean"] == "8.1"
    assert len(rows) == 8 * 3  # the paper's 7 methods, and R-DFCIL (later work, no published value)


def test_markdown_renders_as_a_table(tmp_path):
    out = make_tables(tmp_path)
    for name in ("no_coreset", "coreset", "extras"):
        lines = (out / f"{name}.md").read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("| "))
        table = []
        for line in lines[start:]:
            if not line.startswith("|"):
                break
            table.append(line)
        n_columns = table[0].count("|") - 1
        assert re.fullmatch(r"\|(---:?\|)+", table[1]) and table[1].count("|") - 1 == n_columns
        assert all(line.count("|") - 1 == n_columns for line in table[2:])
        assert len(table) > 3
    header = (out / "no_coreset.md").read_text().splitlines()
    header = next(line for line in header if line.startswith("| Method"))
    assert header.count("|") - 1 == 1 + 3 * 3 and "5 tasks (paper)" in header and "20 tasks (Δ/σ)" in header


def test_latex_is_balanced_booktabs(tmp_path):
    out = make_tables(tmp_path)
    for name in ("no_coreset", "coreset", "extras"):
        latex = (out / f"{name}.tex").read_text()
        environments = re.findall(r"\\(begin|end)\{(\w+)\}", latex)
        stack = []
        for kind, env in environments:
            if kind == "begin":
                stack.append(env)
            else:
                assert stack and stack.pop() == env, f"{name}: \\end{{{env}}} closes nothing"
        assert not stack and {env for _, env in environments} >= {"table", "tabular", "itemize", "minipage"}
        assert latex.count(r"\toprule") == latex.count(r"\midrule") == latex.count(r"\bottomrule") == 1
        assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
        depth = 0
        for char in latex.replace(r"\{", "").replace(r"\}", ""):
            depth += {"{": 1, "}": -1}.get(char, 0)
            assert depth >= 0
        assert depth == 0
        n_columns = len(re.search(r"\\begin\{tabular\}\{([lrc]+)\}", latex)[1])
        body = latex[latex.index(r"\midrule") + 8:latex.index(r"\bottomrule")].strip().splitlines()
        assert body and all(line.count("&") == n_columns - 1 and line.endswith(r"\\") for line in body)
        assert "±" not in latex and "σ" not in latex and "–" not in latex and "_" not in latex.replace(r"\_", "")
    latex = (out / "no_coreset.tex").read_text()
    assert r"ABD & 42.0 $\pm$ 0.8 & 43.9 $\pm$ 0.9 & -2.1 &" in latex
    assert r"\multicolumn{3}{c}{5 tasks}" in latex and r"\cmidrule(lr){8-10}" in latex


def test_protocol_card_lists_the_protocol_and_method_switches(tmp_path):
    out = make_tables(tmp_path)
    card = (out / "no_coreset.md").read_text().split("**Protocol card**")[1]
    assert "Dataset: cifar100" in card
    assert "seeds: 0, 1, 2 (5 tasks); 0, 1, 2 (10 tasks)" in card and "python_random" in card
    assert "blocks_per_stage=5" in card and "250 epochs" in card and "batch size 128" in card
    assert "splits: 5 tasks = 20 classes, then 20 per task; 10 tasks = 10 classes, then 10 per task" in card
    assert "top-1" in card and "Not computed yet: 20 tasks" in card
    assert "ABD (abd) settings: mu=0.1, power_iters=10000" in card
    assert "README.md of GT-RIPL/AlwaysBeDreaming-DFCIL" in card
    coreset_card = (out / "coreset.md").read_text().split("**Protocol card**")[1]
    assert "Memory budget: Naive Rehearsal 2000 images" in coreset_card


def test_extras_table_has_cost_and_stored_memory(tmp_path):
    out = make_tables(tmp_path)
    text = (out / "extras.md").read_text()
    assert "device-hours / run" in text and "GPU-hours" not in text
    rows = [line for line in text.splitlines() if line.startswith("| 5 | ABD")]
    assert rows == ["| 5 | ABD | 42.0 ± 0.8 | 52.0 ± 0.8 | 21.0 ± 0.8 | 2.5 | 1,880,016 | 470,004 | 3 |"]
    with open(out / "extras.csv") as handle:
        lwf = next(r for r in csv.DictReader(handle) if r["method"] == "lwf")
    assert float(lwf["hours_per_run"]) == pytest.approx(10 * 1800 / 3600)
    assert int(lwf["stored_memory_bytes"]) == 4 * 470004 and lwf["devices"] == "cpu"
    gpu = make_tables(tmp_path / "gpu", device="NVIDIA H100 80GB HBM3")
    assert "GPU-hours / run" in (gpu / "extras.md").read_text()


def test_a_task_trained_in_a_shared_stage_counts_the_stage_time(tmp_path):
    path = write_summary(tmp_path / "results", "cifar100-5task", "upper_bound", 0, 5, 69.0)
    summary = json.loads(path.read_text())
    for task in summary["tasks"]:  # the job only loaded the stage's result; the stage recorded 1 h of training
        task.update(wall_seconds=0.05, train_seconds=3000.0, end_task_seconds=600.0)
    path.write_text(json.dumps(summary))
    out = make_tables(tmp_path, paths=[path])
    with open(out / "extras.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["hours_per_run"]) == pytest.approx(5.0)


def test_mlflow_parent_runs_get_their_dataset_and_method_figures(tmp_path):
    from dfcil_core.mlflow_import import paper_figures_for
    names = ["accuracy_curves.png", "accuracy_matrix_abd.png", "accuracy_matrix_base.png", "samples_5tasks.png",
             "samples_10tasks.png"]
    figures = []
    for dataset in ("cifar100", "mnist5k"):
        for name in names:
            (tmp_path / dataset).mkdir(exist_ok=True)
            (tmp_path / dataset / name).write_bytes(b"png")
            figures.append(tmp_path / dataset / name)
    summary = {"method": "abd", "n_tasks": 5, "settings": {"dataset": {"name": "cifar100", "root": "x"}}}
    assert [f.name for f in paper_figures_for(figures, summary)] == [
        "accuracy_curves.png", "accuracy_matrix_abd.png", "samples_5tasks.png"]
    assert all(f.parent.name == "cifar100" for f in paper_figures_for(figures, summary))


def test_a_dataset_the_paper_does_not_report_is_marked_not_applicable(tmp_path):
    paths = [write_summary(tmp_path / "results", "mnist5k-5task", "base", seed, 5, 20.0 + seed,
                           **{"dataset.name": "mnist5k"}) for seed in (0, 1)]
    out = make_tables(tmp_path, dataset="mnist5k", paths=paths)
    rows = rows_of((out / "no_coreset.md").read_text())
    assert rows["Base"][:3] == ["20.5 ± 0.5", "n/a", "n/a"]
    assert rows["UB"] == ["–", "n/a", "n/a"] * 3
    assert "not applicable: the paper reports no mnist5k results" in (out / "no_coreset.md").read_text()


def test_a_cell_with_fewer_seeds_says_so(tmp_path):
    paths = write_grid(tmp_path / "results")
    paths = [p for p in paths if not (p.parent.name == "seed2" and p.parent.parent.name == "abd")]
    out = make_tables(tmp_path, paths=paths)
    assert rows_of((out / "no_coreset.md").read_text())["ABD"][0] == "41.5 ± 0.5 (n=2)"


def test_two_protocols_in_one_column_are_refused(tmp_path):
    paths = write_grid(tmp_path / "results")
    paths.append(write_summary(tmp_path / "results", "cifar100-5task-short", "lwf", 0, 5, 17.0,
                               **{"train.epochs": 50}))
    with pytest.raises(ConfigError, match=r"5 tasks: .* differ in setting 'train\.epochs' \(250 vs 50\)"):
        make_tables(tmp_path, paths=paths)
    assert not (tmp_path / "paper" / "cifar100" / "no_coreset.md").exists()


def test_different_memory_budgets_in_one_column_are_refused(tmp_path):
    paths = write_grid(tmp_path / "results")
    path = write_summary(tmp_path / "results", "cifar100-10task", "lwf_coreset", 0, 10, 27.0)
    summary = json.loads(path.read_text())
    summary["settings"]["method_settings"] = {"memory_size": 500}
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError, match="method_settings.memory_size"):
        make_tables(tmp_path, paths=[*paths, path])


def test_config_level_refusal_names_the_setting():
    config = {"defaults": {"dataset": {"name": "cifar100"}, "model": {"name": "resnet32"},
                           "train": {"epochs": 250}, "seeds": [0, 1, 2], "methods": ["base"]},
              "experiments": {"a": {"first_split": 20, "other_split": 20},
                              "b": {"first_split": 20, "other_split": 20, "train": {"epochs": 100},
                                    "methods": ["abd"]},
                              "c": {"first_split": 10, "other_split": 10}}}
    exps = experiments(config)
    with pytest.raises(ConfigError, match=r"experiments 'a' and 'b' differ in setting 'train\.epochs'"):
        paper.table_sets(exps, {"a": 5, "b": 5, "c": 10})
    config["experiments"]["b"]["train"]["epochs"] = 250  # same protocol: one column, both methods
    sets = paper.table_sets(experiments(config), {"a": 5, "b": 5, "c": 10})
    assert sets["cifar100"].columns == {5: ["a", "b"], 10: ["c"]}
    assert sets["cifar100"].methods == ["base", "abd"]
    assert sets["cifar100"].sample_columns(experiments(config)) == [5]


def test_figures_are_written_as_png_and_svg(tmp_path):
    paths = write_grid(tmp_path / "results")
    from PIL import Image
    task0 = tmp_path / "results" / "cifar100-5task" / "abd" / "seed0" / "task0"
    task0.mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(task0 / "samples.png")
    out = tmp_path / "paper"
    paper.plot_curves(paths, "cifar100", [5, 10, 20], ["base", "abd"], out / "accuracy_curves.png")
    paper.plot_matrix(paths, "cifar100", [5, 10, 20], "abd", out / "accuracy_matrix_abd.png")
    paper.plot_samples(paths, "cifar100", 5, out / "samples_5tasks.png")
    paper.plot_samples(paths, "cifar100", 10, out / "samples_10tasks.png")  # no grid yet: a placeholder
    for name in ("accuracy_curves", "accuracy_matrix_abd", "samples_5tasks", "samples_10tasks"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]


def test_stored_memory_counts_parameters_and_coreset_images():
    from conftest import tiny_settings
    from dfcil_core.run import build

    def memory(method, **hp):
        _, _, data, learner = build(tiny_settings(method, **hp), 0, "cpu")
        return learner, learner.stored_memory(), data.info.channels * data.info.size ** 2

    learner, base, image_bytes = memory("base")
    n_model = sum(p.numel() for p in learner.model.parameters())
    assert base == {"parameters": {"model": n_model}, "coreset_images": 0, "image_bytes": image_bytes,
                    "bytes": 4 * n_model, "reference_units": n_model}
    learner, rehearsal, _ = memory("naive_rehearsal", memory_size=40)
    learner.memory.indices = learner.memory.indices.new_zeros(40)  # as after a task
    rehearsal = learner.stored_memory()
    assert rehearsal["coreset_images"] == 40
    assert rehearsal["bytes"] == 4 * n_model + 40 * image_bytes
    learner, abd, _ = memory("abd", power_iters=2, generator_z_dim=16, generator_width=8)
    n_generator = sum(p.numel() for p in learner.generator.parameters())
    assert abd["parameters"] == {"model": n_model, "generator": n_generator}
    assert abd["bytes"] == 4 * (n_model + n_generator)


def paper_table_jobs(stdout: str) -> list[tuple[set[str], list[str]]]:
    """(inputs, outputs) of every paper_table job a dry run lists."""
    blocks = stdout.split("rule paper_table:")[1:]
    return [(set(re.search(r"^\s+input: (.*)$", b, flags=re.M)[1].split(", ")),
             re.search(r"^\s+output: (.*)$", b, flags=re.M)[1].split(", ")) for b in blocks]


@pytest.mark.parametrize("config_name, table_set, tables", [
    ("cifar100", "cifar100", ("no_coreset", "coreset", "extras")),
    ("cifar100_rdfcil", "cifar100-rdfcil_eccv2022", ("data_free", "extras")),
])
def test_dry_run_of_a_paper_config_lists_a_table_job_per_table_with_every_cell(tmp_path, config_name, table_set,
                                                                               tables):
    config_file = REPO / f"config/paper/{config_name}.yaml"
    cfg = yaml.safe_load(config_file.read_text())
    out = snakemake(tmp_path, "-n", configfile=config_file)
    assert out.returncode == 0, out.stderr
    expected = {f"results/{name}/{method}/seed{seed}/summary.json" for name in cfg["experiments"]
                for method in cfg["defaults"]["methods"] for seed in cfg["defaults"]["seeds"]}
    jobs = paper_table_jobs(out.stdout)
    assert len(jobs) == len(tables) and all(inputs == expected for inputs, _ in jobs)
    assert {o for _, outputs in jobs for o in outputs} == {
        f"results/paper/{table_set}/{t}.{e}" for t in tables for e in ("md", "tex", "csv", "html")}
    for rule in ("paper_curves", "paper_matrix", "import_mlflow"):
        assert f"rule {rule}:" in out.stdout


def test_dry_run_refuses_two_protocols_in_one_column(tmp_path):
    cfg = yaml.safe_load((REPO / "config/paper/cifar100.yaml").read_text())
    cfg["experiments"]["cifar100-5task-short"] = {"first_split": 20, "other_split": 20,
                                                  "train": {"epochs": 50}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", configfile=path)
    assert out.returncode != 0
    assert "differ in setting 'train.epochs'" in out.stdout + out.stderr


def test_a_second_paper_fills_its_own_layout_and_marks_unverified_numbers(tmp_path):
    paths = []
    for method, finals in (("abd", (50.0, 51.0, 52.0)), ("rdfcil", (54.0, 55.0, 56.0))):
        for seed, final in enumerate(finals):
            path = write_summary(tmp_path / "results", "cifar100-rdfcil-5task", method, seed, 6, final)
            summary = json.loads(path.read_text())
            summary["settings"] |= {"first_split": 50, "other_split": 10}
            path.write_text(json.dumps(summary))
            paths.append(path)
    out = tmp_path / "paper" / "cifar100-rdfcil_eccv2022"
    paper.paper_tables(paths, "cifar100", [6, 11, 26], ["abd", "rdfcil"], out, paper="rdfcil_eccv2022",
                       log=lambda msg: None)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.{e}" for t in ("data_free", "extras")
                                                           for e in paper.FORMATS)
    rows = rows_of((out / "data_free.md").read_text())
    # R-DFCIL's 5 incremental tasks after 50 classes are 6 tasks here; its numbers carry the unverified mark
    assert rows["R-DFCIL"][:3] == ["55.0 ± 0.8", "54.8 ± 0.8 ?", "+0.3σ"]  # (55.0 - 54.76) / 0.76; the CSV is exact
    assert rows["ABD"][3:6] == ["–", "43.6 ± 2.4 ?", "–"]
    text = (out / "data_free.md").read_text()
    assert "? unverified: the values come from secondary notes" in text and "6 tasks = 50 classes, then 10" in text
    records = list(csv.DictReader((out / "data_free.csv").open()))
    assert {r["published"] for r in records} == {"unverified"}
    assert {(r["method"], r["tasks"]): r["paper_mean"] for r in records}[("rdfcil", "6")] == "54.76"
    with pytest.raises(ConfigError, match=r"paper 'rdfcil_eccv2022' has no table\(s\) \['coreset'\]"):
        paper.paper_tables(paths, "cifar100", [6], ["abd"], out, paper="rdfcil_eccv2022", tables=["coreset"])
