"""The side-by-side harness of benchmarks/reference_parity (issue #16), without the reference checkout itself:
its CPU shim, how it reads the reference's per-task accuracy files, and the parity verdict."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_parity"


def load(name):
    spec = importlib.util.spec_from_file_location(name, HARNESS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_shim_places_every_cuda_request_on_the_cpu():
    # In a child process: the shim patches torch for the whole process, as the reference's run needs.
    code = f"""
import sys; sys.path.insert(0, {str(HARNESS)!r})
import torch, reference_cpu
reference_cpu.install()
a = torch.zeros(3, device="cuda").cuda()
m = torch.nn.Linear(2, 2).cuda().to(torch.device("cuda:0"))
b = torch.ones(2).to("cuda", torch.float64)
c = torch.randn(2, 2, device=torch.device("cuda"))
assert {{t.device.type for t in (a, b, c, m.weight)}} == {{"cpu"}}, "not on the CPU"
assert b.dtype == torch.float64
torch.cuda.set_device(0); torch.cuda.empty_cache()
total = torch.zeros((1,), requires_grad=True).cuda()  # as the reference's kd.py: a non-leaf, then +=
w = torch.ones(2, requires_grad=True)
total += (2 * w).sum()
total.backward()
assert w.grad.tolist() == [2.0, 2.0]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_reference_accuracy_history_is_read_as_task_after_task(tmp_path):
    parity = load("parity")
    # The reference's results-acc/pt.yaml: history[j][i][r] = accuracy on task j after task i, repeat r.
    history = [[[90.0, 80.0], [10.0, 11.0]], [[0.0, 0.0], [95.0, 85.0]]]
    (tmp_path / "results-acc").mkdir()
    (tmp_path / "results-acc" / "pt.yaml").write_text(yaml.safe_dump({"history": history}))
    assert parity.read_reference(tmp_path) == [[[90.0], [10.0, 95.0]], [[80.0], [11.0, 85.0]]]


def test_parity_verdict_uses_the_larger_of_the_reference_population_std_and_three_points():
    parity = load("parity")

    def record(finals):
        return {"final": finals, "accuracy": [[[f]] for f in finals]}

    records = {("reference", "base"): record([20.0, 20.0, 20.0]), ("ours", "base"): record([17.5, 17.5, 17.5]),
               ("reference", "abd"): record([30.0, 40.0, 50.0]), ("ours", "abd"): record([33.0, 34.0, 35.0]),
               ("reference", "lwf"): record([20.0, 20.0, 20.0]), ("ours", "lwf"): record([16.0, 16.5, 17.0])}
    _, rows = parity.table(records, ["base", "abd", "lwf"])
    verdict = {r["method"]: (round(r["tolerance"], 3), r["within"]) for r in rows}
    # population std of 30/40/50: 8.165 > 3 points; LwF's 3.5-point gap exceeds its 3-point tolerance
    assert verdict == {"base": (3.0, True), "abd": (8.165, True), "lwf": (3.0, False)}


def test_a_reference_seed_runs_alone_after_placeholder_repeats(tmp_path):
    """The reference's run_dfcil.py resumes after the repeats in its results files (all five of them) with
    `--overwrite 0`: seed r runs alone after r placeholder repeats."""
    parity = load("parity")
    parity.placeholder_repeats(tmp_path, 2, 5)
    shapes = {path.relative_to(tmp_path).as_posix(): np.asarray(yaml.safe_load(path.read_text())["history"]).shape
              for path in tmp_path.glob("results-*/*.yaml")}
    assert shapes == {"results-acc/global.yaml": (5, 2), "results-acc/pt.yaml": (5, 5, 2),
                      "results-acc/pt-local.yaml": (5, 5, 2), "results-mem/global.yaml": (5, 2),
                      "results-time/global.yaml": (5, 2)}
    cmd = parity.reference_command(Path("REF"), "abd", 2, Path("DATA"), tmp_path)
    assert cmd[cmd.index("--repeat") + 1] == "3" and cmd[cmd.index("--overwrite") + 1] == "0"
    assert cmd[cmd.index("--workers") + 1] == "0"  # the protocol: every random draw in the main process
    other_streams = parity.reference_command(Path("REF"), "abd", 2, Path("DATA"), tmp_path, workers=1)
    assert other_streams[other_streams.index("--workers") + 1] == "1"


def test_a_record_of_fewer_seeds_runs_only_the_seeds_it_lacks(tmp_path):
    parity = load("parity")
    matrices = [[[90.0], [10.0, 95.0]], [[80.0], [11.0, 85.0]]]
    runs = tmp_path / "runs" / "ours"
    runs.mkdir(parents=True)
    (runs / "base.json").write_text(json.dumps({"seeds": [0, 1], "accuracy": matrices, "final": [52.5, 48.0],
                                                "seconds": 10.0, "command": ["python", "x"]}))
    two = parity.method_record("ours", "base", argparse.Namespace(out=tmp_path, seeds=1))
    assert two["seeds"] == [0] and two["final"] == [52.5] and two["accuracy"] == matrices[:1]
    assert parity.method_record("ours", "base", argparse.Namespace(out=tmp_path, seeds=3)) is None
    for seed in (0, 1):
        record = json.loads((runs / "base" / f"seed{seed}.json").read_text())
        assert record["seed"] == seed and record["accuracy"] == matrices[seed] and record["seconds"] is None
    assert not (runs / "base" / "seed2.json").exists()


def test_our_seed_is_recorded_from_its_child_and_the_hand_over_file_is_removed(tmp_path, monkeypatch):
    parity = load("parity")
    matrix = [[90.0], [10.0, 95.0]]

    def child(cmd, **kwargs):  # stands in for `parity.py --ours`: it writes its matrix where --result says
        Path(cmd[cmd.index("--result") + 1]).write_text(json.dumps(matrix))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(parity.subprocess, "run", child)
    args = argparse.Namespace(out=tmp_path, data=Path("DATA"))
    record = parity.run_seed("ours", "base", 4, args)
    seed_dir = tmp_path / "runs" / "ours" / "base"
    assert record["seed"] == 4 and record["accuracy"] == matrix
    assert record["machine"] == parity.host.describe() and " cores, torch " in record["machine"]
    assert json.loads((seed_dir / "seed4.json").read_text()) == record
    assert not (seed_dir / "seed4.matrix.json").exists()
    monkeypatch.setattr(parity.subprocess, "run", lambda cmd, **kwargs: pytest.fail("a recorded seed ran again"))
    assert parity.run_seed("ours", "base", 4, args) == record


def test_the_table_says_which_machine_ran_each_seed_and_which_pairs_ran_apart():
    """The same code and seed round differently on another CPU model, so a pair whose sides ran on different
    (or unrecorded) machines is named, and records older than the machine field count as not recorded."""
    parity = load("parity")
    a, b = "CPU A family 1 model 2, 2 cores, torch 9", "CPU B family 3 model 4, 2 cores, torch 9"
    record = lambda seeds, where: {"seeds": seeds, "final": [0.0] * len(seeds), "machines": where}  # noqa: E731
    records = {("reference", "base"): {"seeds": [0, 1, 2, 3, 5], "final": [0.0] * 5},  # older than the field
               ("ours", "base"): record([0, 1, 2, 3, 5], [a] * 5),
               ("reference", "e2e"): record([0, 1, 2], [a, a, b]),
               ("ours", "e2e"): record([0, 1, 2], [a, a, a])}
    note = parity.machines_note(records, ["base", "e2e"])
    assert f"- {a}: ours base seeds 0-3, 5; reference e2e seeds 0-1; ours e2e seeds 0-2" in note
    assert f"- {b}: reference e2e seeds 2" in note
    assert "- not recorded: reference base seeds 0-3, 5" in note
    assert note.endswith("did not run on one recorded machine: base seeds 0-3, 5; e2e seeds 2")
    records[("reference", "e2e")] = record([0, 1, 2], [a] * 3)
    assert parity.machines_note(records, ["e2e"]).endswith("did not run on one recorded machine: none")


def test_paired_differences_are_taken_over_the_seeds_both_sides_recorded(tmp_path):
    sides = {"a": {"seeds": [0, 1, 2, 3], "final": [50.0, 60.0, 55.0, 99.0]},
             "b": {"seeds": [0, 1, 2], "final": [52.0, 55.0, 55.0]}}
    for side, record in sides.items():
        (tmp_path / side).mkdir()
        (tmp_path / side / "bic.json").write_text(json.dumps(record))
    out = tmp_path / "paired.json"
    done = subprocess.run([sys.executable, str(HARNESS / "paired.py"), str(tmp_path / "a"), str(tmp_path / "b"),
                           "--tolerance", "3", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1, 2] and result["differences"] == [-2.0, 5.0, 0.0]  # seed 3: only in A
    assert result["mean"] == 1.0 and round(result["sample_std"], 4) == round(np.std([-2, 5, 0], ddof=1), 4)
    se = np.std([-2, 5, 0], ddof=1) / np.sqrt(3)
    assert round(result["se_three_seeds"], 6) == round(se, 6)
    # P(|N(0, se)| > 3): se = 2.08, so 3 is 1.44 standard errors out, about 15 %
    assert 0.14 < result["p_miss_three_seeds"] < 0.16
    half = 4.302653 * se  # t quantile, 2 degrees of freedom, 97.5 %
    assert np.allclose(result["t95_interval"], [1.0 - half, 1.0 + half], atol=1e-5)
    no_record = subprocess.run([sys.executable, str(HARNESS / "paired.py"), str(tmp_path / "a"), str(tmp_path / "a"),
                               "--method", "missing"], capture_output=True, text=True)
    assert no_record.returncode == 2 and "no missing.json in" in no_record.stderr


def test_paired_counts_tasks_that_end_their_own_training_at_chance_per_side_and_tests_the_seeds(tmp_path):
    # accuracy[i][j]: task j after training task i; the diagonal is each task right after its own training
    healthy = [[90.0], [10.0, 95.0], [0.0, 5.0, 88.0]]
    sides = {"a": {0: [[90.0], [0.0, 55.0], [0.0, 0.0, 60.0]], 1: healthy, 2: [[58.0], [0.0, 97.0], [0.0, 0.0, 91.0]]},
             "b": {0: healthy, 1: healthy, 2: [[91.0], [0.0, 61.0], [0.0, 0.0, 89.0]]}}
    for side, matrices in sides.items():
        (tmp_path / side).mkdir()
        (tmp_path / side / "base.json").write_text(json.dumps({
            "seeds": list(matrices), "accuracy": list(matrices.values()),
            "final": [float(np.mean(m[-1])) for m in matrices.values()]}))
    out = tmp_path / "paired.json"
    done = subprocess.run([sys.executable, str(HARNESS / "paired.py"), str(tmp_path / "a"), str(tmp_path / "b"),
                           "--method", "base", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    a, b = result["collapses"]["a"], result["collapses"]["b"]
    assert a["collapsed_tasks"] == {"0": [1, 2], "2": [0]}  # 60.0 is on the line and counts; 61.0 does not
    assert (a["n_collapsed_tasks"], a["n_tasks"], a["n_seeds_with_collapse"]) == (3, 9, 2)
    assert (b["n_collapsed_tasks"], b["n_seeds_with_collapse"]) == (0, 0)
    # 2 of 3 seeds against 0 of 3: the hypergeometric tail is C(3,2)C(3,0)/C(6,2) = 3/15 one-sided, twice that two-sided
    assert abs(result["collapses"]["fisher_p_a_more"] - 0.2) < 1e-9
    assert abs(result["collapses"]["fisher_p_two_sided"] - 0.4) < 1e-9
    task1 = result["right_after_training"][1]  # a - b per seed: 55 - 95, 95 - 95, 97 - 61
    assert task1["mean"] == (-40 + 0 + 36) / 3
    assert abs(task1["standard_error"] - np.std([-40, 0, 36], ddof=1) / np.sqrt(3)) < 1e-9
    assert "seed 0 tasks 1, 2; seed 2 task 0" in done.stdout


def test_the_one_ulp_twin_differs_from_the_original_by_exactly_one_float_in_every_weight():
    import torch
    lockstep = load("bic_lockstep")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 3))
    original = [p.detach().clone() for p in model.parameters()]
    lockstep.nudge_one_ulp(model, seed=0)
    ups = 0
    for before, p in zip(original, model.parameters()):
        after = p.detach()
        assert (after != before).all()
        # one step back towards the original lands on it: no float lies between them
        assert torch.equal(torch.nextafter(after, before), before)
        ups += int((after > before).sum())
    total = sum(p.numel() for p in original)
    assert 0.45 * total < ups < 0.55 * total  # a coin flip per weight


def test_our_side_takes_the_reference_batches_in_order_and_refuses_one_more():
    import torch
    lockstep = load("bic_lockstep")

    class OurData:
        device = torch.device("cpu")

        def train_batch(self, index, normalize=True):
            raise AssertionError("our own batches must not be drawn")

    recorded = [(torch.full((2, 3), float(k)), torch.tensor([k, k])) for k in range(2)]
    replay = lockstep.ReplayedBatches(OurData(), recorded)
    assert replay.device == torch.device("cpu")  # everything else is our data's
    for k in range(2):
        batch = replay.train_batch(torch.tensor([7, 8]))
        assert torch.equal(batch.x, recorded[k][0]) and torch.equal(batch.y, recorded[k][1])
        assert batch.index.tolist() == [7, 8]
    with pytest.raises(RuntimeError, match="batch 3.*yielded 2"):
        replay.train_batch(torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="unnormalized"):  # the record holds only normalized batches
        lockstep.ReplayedBatches(OurData(), recorded).train_batch(torch.tensor([0, 1]), normalize=False)


def test_the_recording_loader_keeps_copies_of_what_it_yielded():
    import torch
    lockstep = load("bic_lockstep")
    batches = [(torch.zeros(2, 3), torch.tensor([0, 1]), 0), (torch.ones(2, 3), torch.tensor([1, 0]), 0)]
    loader = lockstep.RecordingLoader(batches)
    for x, _, _ in loader:
        x.add_(5)  # a consumer that changes the batch in place does not change the record
    assert len(loader) == 2 and [float(x.sum()) for x, _ in loader.batches] == [0.0, 6.0]
    assert [y.tolist() for _, y in loader.batches] == [[0, 1], [1, 0]]


def test_a_record_names_the_kernel_caps_set_in_the_environment(monkeypatch):
    """An AVX-512 CPU with torch's kernels held to AVX2 rounds as an AVX2 CPU does, so the record says so."""
    host = load("parity").host
    for name in host.KERNEL_CAPS:
        monkeypatch.delenv(name, raising=False)
    plain = host.describe()
    assert "ONEDNN_MAX_CPU_ISA" not in plain and "ATEN_CPU_CAPABILITY" not in plain
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert host.describe() == plain + ", ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
