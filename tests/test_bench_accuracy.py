"""The accuracy benchmark (benchmarks/accuracy.py): a thin script that runs ``compare`` on the shared datasets.

Its comparisons run through the harness that ``tests/test_compare.py`` tests end to end; here: the gathering of the
comparisons into one results file, the list of figures that moved, the BENCHMARKS section and plot, the refusals.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import accuracy
from benchmarks.common import splice_section
from nnunet_sparseattn.compare.results import paired_test
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness.budgets import BUDGETS


def _run(trainer: str, dice: dict, s_per_iter: float, baseline: bool = False, status: str = "done") -> dict:
    label = "stock nnU-Net" if trainer == "nnUNetTrainer" else trainer.removeprefix("nnUNetTrainer")
    mean = sum(dice.values()) / len(dice)
    per_case = {c: {"dice": dice, "mean_dice": mean + i / 100, "hd95": {}} for i, c in enumerate("abcd")}
    return {
        "label": label,
        "trainer": trainer,
        "plans": "nnUNetPlans",
        "baseline": baseline,
        "status": status,
        "dice": dice,
        "mean_dice": mean,
        "hd95": {k: 2.5 for k in dice},
        "s_per_iter": s_per_iter,
        "s_per_case": 0.5,
        "peak_memory_bytes": 3 * 2**30,
        "params": 5_600_000,
        "flops": 38_280_000_000,
        "per_case": per_case,
    }


def _comparison(name: str, classes: tuple[str, ...], extra_runs: dict | None = None) -> dict:
    runs = {
        "nnUNetTrainer__nnUNetPlans": _run("nnUNetTrainer", {c: 0.80 for c in classes}, 0.2, baseline=True),
        "nnUNetTrainerNB__nnUNetPlans": _run("nnUNetTrainerNB", {c: 0.806 for c in classes}, 0.21),
        "nnUNetTrainerBSA__nnUNetPlans": _run("nnUNetTrainerBSA", {c: 0.79 for c in classes}, 0.25),
        "nnUNetTrainerMDSA__nnUNetPlans": _run("nnUNetTrainerMDSA", {c: 0.799 for c in classes}, 0.35),
        **(extra_runs or {}),
    }
    stock = {c: v["mean_dice"] for c, v in runs["nnUNetTrainer__nnUNetPlans"]["per_case"].items()}
    tests = [
        {
            "run": k,
            "baseline": "nnUNetTrainer__nnUNetPlans",
            **paired_test({c: v["mean_dice"] for c, v in r["per_case"].items()}, stock),
        }
        for k, r in runs.items()
        if not r["baseline"]
    ]
    return {
        "dataset": {"id": 4, "name": name},
        "configuration": "3d_fullres",
        "budget": BUDGETS["gpu"].to_json(),
        "budget_text": BUDGETS["gpu"].describe(),
        "device": "cuda",
        "machine": "NVIDIA H100",
        "torch": "t",
        "nnunetv2": "n",
        "python": "p",
        "heldout": {"kind": "validation", "cases": {"fold_0": list("abcd")}},
        "started": "2026-01-01T00:00:00+00:00",
        "updated": "2026-02-03T10:00:00+00:00",
        "runs": runs,
        "tests": tests,
    }


def _results() -> dict:
    adamw = {"nnUNetTrainerBSA_AdamW__nnUNetPlans": _run("nnUNetTrainerBSA_AdamW", {"lesion": 0.9}, 0.3)}
    comparisons = {
        "hippocampus": _comparison("Dataset004_Hippocampus", ("Anterior", "Posterior")),
        "isic2017": _comparison("Dataset917_ISIC2017", ("lesion",), adamw),
    }
    return accuracy.gather(comparisons, list(accuracy.TRAINERS), "python -m benchmarks.accuracy --budget gpu")


def test_gather_keeps_the_benchmarks_trainers_and_their_tests():
    results = _results()
    assert results["schema"] == accuracy.SCHEMA and results["budget"]["name"] == "gpu"
    isic = results["datasets"]["isic2017"]
    assert list(isic["runs"]) == [
        "nnUNetTrainer__nnUNetPlans",
        "nnUNetTrainerNB__nnUNetPlans",
        "nnUNetTrainerBSA__nnUNetPlans",
        "nnUNetTrainerMDSA__nnUNetPlans",
    ]
    assert [t["run"] for t in isic["tests"]] == list(isic["runs"])[1:]  # the optimizer benchmark's run left out
    assert isic["title"] == "ISIC 2017" and isic["distance_unit"] == "px"


def test_moved_lists_every_dice_that_moved_by_more_than_two_points():
    new = _results()
    old = json.loads(json.dumps(new))
    assert accuracy.moved(old, new) == [] and accuracy.moved(None, new) == []
    old["datasets"]["hippocampus"]["runs"]["nnUNetTrainerBSA__nnUNetPlans"]["mean_dice"] = 0.70
    old["datasets"]["hippocampus"]["runs"]["nnUNetTrainerBSA__nnUNetPlans"]["dice"]["Anterior"] = 0.775
    # an earlier schema keyed the runs by trainer
    old["datasets"]["isic2017"]["runs"] = {
        "nnUNetTrainerNB": {"status": "done", "mean_dice": 0.90, "dice": {"lesion": 0.90}}
    }
    assert accuracy.moved(old, new) == [
        "MSD Hippocampus BSA mean Dice: 0.700 -> 0.790 (+9.0 points)",
        "ISIC 2017 NB mean Dice: 0.900 -> 0.806 (-9.4 points)",
        "ISIC 2017 NB lesion Dice: 0.900 -> 0.806 (-9.4 points)",
    ]


def test_section_states_command_budget_machine_date_the_table_and_the_targets(tmp_path):
    path = tmp_path / "accuracy-cuda-gpu.json"
    path.write_text(json.dumps(_results()))
    assert accuracy.plot(_results(), path.with_suffix(".png")).is_file()
    section = accuracy.render_section([path], docs_root=tmp_path)
    assert "### `gpu` budget on NVIDIA H100 (2026-02-03)" in section
    assert "Command: `python -m benchmarks.accuracy --budget gpu`" in section
    assert "50 epochs x 250 iterations" in section and "torch.compile in training on" in section
    assert (
        "- MSD Hippocampus: Dataset004_Hippocampus `3d_fullres`, 4 validation cases of fold 0 predicted and "
        "scored; HD95 in mm; ran from 2026-01-01T00:00:00+00:00 to 2026-02-03T10:00:00+00:00."
    ) in section
    assert (
        "| MSD Hippocampus | stock nnU-Net | `nnUNetPlans` | 0.800 | Anterior 0.800, Posterior 0.800 | – "
        "| Anterior 2.50, Posterior 2.50 | 0.200 | 0.50 | 3.00 GiB | 5.60 M | 38.28 G | done |"
    ) in section
    assert "| ISIC 2017 | NB | `nnUNetPlans` | 0.806 | lesion 0.806 | +0.6 (p " in section
    # the project's targets: within 0.5 Dice points of stock, at most 1.5x its time per iteration
    assert "- BSA: Dice -1.00 points (missed), time per iteration 1.25x (met)" in section
    assert "- MDSA: Dice -0.10 points (met), time per iteration 1.75x (missed)" in section
    assert "- Bilateral: not measured" in section
    assert "(accuracy-cuda-gpu.png)" in section
    old = tmp_path / "accuracy-cpu-cpu.json"
    old.write_text(json.dumps({"schema": 1}))
    assert "written by an earlier version of this script" in accuracy.render_section([old], docs_root=tmp_path)


def test_splice_section_rewrites_only_between_the_markers():
    begin, end = accuracy.MARKERS
    doc = f"# Benchmarks\n\nintro\n{begin}\nold text\n{end}\n\n## Other\nkept\n"
    once = splice_section(doc, "new section\n", accuracy.MARKERS)
    assert once == f"# Benchmarks\n\nintro\n{begin}\nnew section\n{end}\n\n## Other\nkept\n"
    assert splice_section(once, "new section\n", accuracy.MARKERS) == once
    for broken in ("no markers", f"{end}\n{begin}", f"{begin}{end}{begin}{end}"):
        with pytest.raises(UserError, match="accuracy:begin"):
            splice_section(broken, "x", accuracy.MARKERS)


def test_plot_has_one_row_per_dataset(tmp_path):
    from PIL import Image

    path = accuracy.plot(_results(), tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        width, height = image.size
    assert 0.6 * width < height < 0.9 * width  # two rows of two panels


def test_main_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    assert accuracy.main(["--budget", "huge", "--out-dir", str(tmp_path)]) == 2
    assert "unknown budget huge: choose from tiny, cpu, gpu" in capsys.readouterr().err
    assert accuracy.main(["--budget", "tiny", "--trainers", "nnUNetTrainerX", "--out-dir", str(tmp_path)]) == 2
    assert "unknown trainer nnUNetTrainerX" in capsys.readouterr().err
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n")
    assert accuracy.main(["--report-only", "--update-docs", "--docs", str(docs), "--out-dir", str(tmp_path)]) == 2
    assert "needs exactly one <!-- accuracy:begin -->" in capsys.readouterr().err
    assert (
        accuracy.main(
            [
                "--budget",
                "tiny",
                "--datasets",
                "isic2017",
                "--data",
                str(tmp_path / "none"),
                "--work",
                str(tmp_path / "work"),
                "--out-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "ISIC 2017 is not at" in capsys.readouterr().err


def test_s_per_iter_ratios_are_flagged_where_the_machine_load_changed_between_trainings():
    def dataset(loads):
        return {
            "title": "MSD Hippocampus",
            "runs": {
                f"run{i}": {"folds": {"0": {"load_average_before": [a, 0, 0], "load_average_after": [b, 0, 0]}}}
                for i, (a, b) in enumerate(loads)
            },
        }

    quiet, shared = dataset([(1.5, 2.2), (1.8, 1.6)]), dataset([(3.3, 9.3), (1.7, 1.8)])
    assert accuracy.load_range(shared) == (1.7, 9.3)
    assert accuracy.timings_comparable(quiet) and not accuracy.timings_comparable(shared)
    assert accuracy.timings_comparable({"runs": {}})  # no load recorded: nothing to flag
    lines = accuracy.load_lines({"datasets": {"hippocampus": shared}})
    assert lines == [
        "- MSD Hippocampus: 1-minute load average 1.7 to 9.3 during the trainings; s/iter ratios NOT "
        "comparable between trainers (the load changed between their trainings); the network speed "
        "benchmark measures the ratios side by side."
    ]
