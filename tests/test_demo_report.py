"""What ``make demo`` prints and draws: the Dice table names each trainer, demo.png names the class colours, and the
routing table gives the shares explain measured (with the query's own region left out too)."""

from __future__ import annotations

import numpy as np

from nnunet_sparseattn.demo.report import budget_line, dice_table, routing_table, save_comparison_png

LABELS = {"background": 0, "organ": 1, "vessel": 2, "nodule": 3}


def _summary(dice: dict[str, float], missing_nodule_cases: int = 0) -> dict:
    """nnU-Net's evaluation summary.json, as much of it as the table reads (two cases)."""
    per_case = [{"metrics": {k: {"Dice": v} for k, v in dice.items()}} for _ in range(2)]
    for case in per_case[:missing_nodule_cases]:
        case["metrics"]["3"]["Dice"] = float("nan")
    return {
        "mean": {k: {"Dice": v} for k, v in dice.items()},
        "metric_per_case": per_case,
        "foreground_mean": {"Dice": float(np.mean(list(dice.values())))},
    }


def test_the_dice_table_has_a_column_per_trainer_named_after_it():
    table = dice_table(
        [
            ("nnUNetTrainerBSA_demo", _summary({"1": 0.9, "2": 0.6, "3": 0.3}, 1)),
            ("nnUNetTrainer_demo", _summary({"1": 0.8, "2": 0.5, "3": 0.2})),
        ],
        LABELS,
    )
    lines = table.splitlines()
    assert lines[0].split() == ["structure", "nnUNetTrainerBSA_demo", "nnUNetTrainer_demo", "cases"]
    assert lines[1].split() == ["organ", "0.900", "0.800", "2"]
    assert lines[3].split() == ["nodule", "0.300", "0.200", "1"]  # a case without a nodule in its reference
    assert lines[4].split() == ["mean", "(foreground)", "0.600", "0.500"]


def test_demo_png_has_a_column_per_prediction_and_a_legend_naming_the_classes(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    label = np.zeros((4, 8, 8), np.uint8)
    label[1, 2:5, 2:5], label[2, 1, 1:7], label[2, 5:7, 5:7] = 1, 2, 3
    paths = {}
    for name, array in (("image", label.astype(np.float32) * 10), ("gt", label), ("a", label), ("b", label)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(paths[name]))
    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: figures.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    save_comparison_png(
        [(paths["image"], paths["gt"], [paths["a"], paths["b"]])],
        tmp_path / "demo.png",
        LABELS,
        ["prediction, A", "prediction, B"],
    )
    [fig] = figures
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["1: organ", "2: vessel", "3: nodule"]
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split("\n")[0] for t in titles] == ["image", "ground truth", "prediction, A", "prediction, B"]
    assert all(t.endswith("axial slice 2") for t in titles)  # the slice with the most structures


def test_the_demo_says_when_the_time_budget_cut_training():
    record = {"time_budget_s": 480.0, "step_s": 18.4, "planned_epochs": 10, "epochs": 1, "iterations_per_epoch": 20}
    line = budget_line("nnUNetTrainerBSA_demo", record)
    assert line == (
        "note: the time budget of 480 s allowed nnUNetTrainerBSA_demo 1 epoch(s) of 20 iterations, 10% of the "
        "planned 10 (a training step took 18.4 s; a busy or slow machine?): its Dice is below what the full "
        "schedule reaches"
    )
    assert budget_line("t", dict(record, epochs=10)) == "" and budget_line("t", None) == ""


def test_the_routing_table_gives_explains_shares_for_the_nodule():
    def shares(routed, chance):
        return {
            "queries": 120,
            "routed_with_foreground": routed,
            "all_with_foreground": chance,
            "routed_with_foreground_other": routed - 0.01,
            "all_with_foreground_other": chance - 0.02,
            "routed_with_label": 0.17,
            "all_with_label": 0.1,
        }

    explained = {
        "routing_foreground": {
            "encoder.stages.2.1.attn": {"organ": dict(shares(0.9, 0.7), queries=5000), "nodule": shares(0.86, 0.66)},
            "encoder.stages.2.2.attn": {"organ": shares(0.7, 0.7), "nodule": shares(0.68, 0.66)},
            "encoder.stages.3.1.attn": {},  # dense: nothing routed
        }
    }
    lines = routing_table(explained, 6).splitlines()
    assert lines[0].startswith("queries inside the nodule (120 voxels of the reference, 6 held-out cases)")
    assert lines[2].split() == ["encoder.stages.2.1.attn", "86%", "66%", "85%", "vs", "64%", "17%", "vs", "10%"]
    assert lines[3].split()[:3] == ["encoder.stages.2.2.attn", "68%", "66%"]
    assert len(lines) == 4
    assert routing_table({"routing_foreground": {"m": {}}}, 6) == ""
    assert routing_table({}, 6) == ""
