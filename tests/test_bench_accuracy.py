"""The accuracy/cost benchmark harness (benchmarks/accuracy.py, benchmarks/budgets.py).

Fast: the boundary metric against hand-made cases with known answers, the timing and resume bookkeeping, the
results file, the report writers. Slow: the harness end to end through nnU-Net's CLI on a Hippocampus subset with a
tiny budget, stock nnU-Net, then run again (nothing redone), after a simulated kill between training and scoring
(the model is scored, not retrained) and after a simulated kill during the last epoch (nnU-Net's ``--c`` trains that
epoch again from the epoch before's checkpoint).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import accuracy, budgets  # noqa: E402
from nnunet_sparseattn.errors import UserError  # noqa: E402

# ------------------------------------------------------------------------------------------------------ HD95
def test_hd95_known_answers():
    ref = np.zeros((6, 7, 8), bool)
    ref[1:5, 2:6, 3:7] = True
    assert accuracy.hd95(ref, ref, (1.0, 2.0, 3.0)) == 0.0

    # one voxel against one voxel 3 voxels away along the axis spaced 2 mm: 6 mm
    a, b = np.zeros((5, 9, 5), bool), np.zeros((5, 9, 5), bool)
    a[2, 1, 2], b[2, 4, 2] = True, True
    assert accuracy.hd95(a, b, (1.0, 2.0, 1.0)) == pytest.approx(6.0)
    assert accuracy.hd95(b, a, (1.0, 2.0, 1.0)) == pytest.approx(6.0)  # symmetric

    # a 20-voxel line (every voxel on its boundary) against one voxel at its end, 0.5 mm apart along the line:
    # distances line->voxel 0.5, 1.0, ..., 10.0 and voxel->line 0.5; the larger directed 95th percentile (linear
    # interpolation at index 0.95 x 19 = 18.05 of the first set) is 9.5 + 0.05 x 0.5 = 9.525 mm
    line, point = np.zeros((24, 3), bool), np.zeros((24, 3), bool)
    line[1:21, 1], point[0, 1] = True, True
    assert accuracy.hd95(line, point, (0.5, 4.0)) == pytest.approx(9.525)


def test_hd95_is_undefined_for_an_empty_mask_and_checks_dimensions():
    full, empty = np.ones((4, 4), bool), np.zeros((4, 4), bool)
    assert math.isnan(accuracy.hd95(empty, full, (1.0, 1.0)))
    assert math.isnan(accuracy.hd95(full, empty, (1.0, 1.0)))
    with pytest.raises(ValueError, match="same dimensions"):
        accuracy.hd95(full, full, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same dimensions"):
        accuracy.hd95(full, np.ones((4, 5), bool), (1.0, 1.0))


def test_drop_singleton_axes_keeps_the_real_spatial_axes():
    seg2d, spacing = accuracy.drop_singleton_axes(np.zeros((1, 1, 5, 6)), (999.0, 1.0, 1.0))
    assert seg2d.shape == (5, 6) and spacing == (1.0, 1.0)
    seg3d, spacing = accuracy.drop_singleton_axes(np.zeros((1, 3, 4, 5)), (2.0, 1.0, 0.5))
    assert seg3d.shape == (3, 4, 5) and spacing == (2.0, 1.0, 0.5)


def test_boundary_metrics_read_files_with_nnunet_readers(tmp_path):
    """2D PNGs (nnU-Net's dummy axis dropped) and 3D NIfTI with anisotropic spacing (axis order: SimpleITK's x, y, z
    spacing is the array's last axis first): one pixel/voxel against one, empty cases counted, not scored."""
    import SimpleITK as sitk
    from PIL import Image

    ref_dir, pred_dir = tmp_path / "png_ref", tmp_path / "png_pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    cases = {"a": ((5, 5), (5, 9)), "b": (None, None), "c": ((3, 3), None)}  # (reference pixel, predicted pixel)
    for case, (r, p) in cases.items():
        for folder, pixel in ((ref_dir, r), (pred_dir, p)):
            img = np.zeros((12, 14), np.uint8)
            if pixel is not None:
                img[pixel] = 1
            Image.fromarray(img).save(folder / f"{case}.png")
    dataset_json = {"labels": {"background": 0, "lesion": 1}, "file_ending": ".png",
                    "overwrite_image_reader_writer": "NaturalImage2DIO"}
    out = accuracy.boundary_metrics(pred_dir, ref_dir, dataset_json, sorted(cases))
    assert out["hd95"] == {"lesion": pytest.approx(4.0)}
    assert out["mean_hd95"] == pytest.approx(4.0)
    assert out["hd95_scored_cases"] == {"lesion": 1} and out["hd95_undefined_cases"] == {"lesion": 1}

    ref_dir, pred_dir = tmp_path / "nii_ref", tmp_path / "nii_pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    for folder, z, label in ((ref_dir, 1, 1), (pred_dir, 3, 1), (ref_dir, None, 2), (pred_dir, None, 2)):
        path = folder / "case.nii.gz"
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) if path.exists() else np.zeros((6, 7, 8), np.uint8)
        if z is not None:
            arr[z, 2, 2] = label  # array axes (z, y, x)
        else:
            arr[0, 0, 0:4] = label  # label 2: a row along x, same in both: HD95 0
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing((1.0, 1.0, 3.0))  # x, y, z: z is the first array axis
        sitk.WriteImage(image, str(path))
    dataset_json = {"labels": {"background": 0, "one": 1, "two": 2}, "file_ending": ".nii.gz"}
    out = accuracy.boundary_metrics(pred_dir, ref_dir, dataset_json, ["case"])
    assert out["hd95"] == {"one": pytest.approx(6.0), "two": pytest.approx(0.0)}  # 2 slices x 3 mm
    assert out["mean_hd95"] == pytest.approx(3.0)


# ------------------------------------------------------------------------------------------- timing, resume
def _epoch(train_s, iterations, first):
    return {"train_s": train_s, "iterations": iterations, "first_in_session": first}


def test_seconds_per_iteration_excludes_each_sessions_first_epoch():
    timing = {"epochs": {"0": _epoch(50.0, 5, True), "1": _epoch(10.0, 5, False), "2": _epoch(30.0, 5, True),
                         "3": _epoch(14.0, 5, False)}}
    assert budgets.seconds_per_iteration(timing) == {"s_per_iter": pytest.approx(24.0 / 10), "timed_epochs": 2,
                                                     "warmup_excluded": True}
    only_warmup = {"epochs": {"0": _epoch(8.0, 4, True)}}
    assert budgets.seconds_per_iteration(only_warmup) == {"s_per_iter": 2.0, "timed_epochs": 1,
                                                          "warmup_excluded": False}
    with pytest.raises(ValueError, match="no finished epoch"):
        budgets.seconds_per_iteration({"epochs": {}, "sessions": []})


def test_restart_timing_keeps_checkpointed_epochs_only():
    timing = {"epochs": {str(e): _epoch(1.0, 1, e == 0) for e in range(4)}, "sessions": [{"start_epoch": 0}]}
    resumed = budgets.restart_timing(timing, 2)  # --c from the checkpoint written after epoch 1
    assert sorted(resumed["epochs"]) == ["0", "1"] and resumed["sessions"] == [{"start_epoch": 0}]
    assert budgets.restart_timing(timing, 0) == {"epochs": {}, "sessions": []}  # a fresh run forgets a killed one
    assert budgets.restart_timing(None, 3) == {"epochs": {}, "sessions": []}


def test_peak_memory_is_the_largest_over_sessions():
    timing = {"sessions": [{"peak_bytes": 5, "kind": "rss"}, {"start_epoch": 2}, {"peak_bytes": 9, "kind": "rss"}]}
    assert budgets.peak_memory(timing) == {"peak_memory_bytes": 9, "peak_memory_kind": "rss"}
    assert budgets.peak_memory({"sessions": []}) == {"peak_memory_bytes": None, "peak_memory_kind": None}


def test_training_state_decides_between_skip_continue_and_fresh(tmp_path):
    assert accuracy.training_state(tmp_path) == "fresh"
    (tmp_path / "checkpoint_best.pth").touch()
    assert accuracy.training_state(tmp_path) == "resume"
    (tmp_path / "checkpoint_latest.pth").touch()
    assert accuracy.training_state(tmp_path) == "resume"
    (tmp_path / "checkpoint_final.pth").touch()
    assert accuracy.training_state(tmp_path) == "done"


def test_prediction_timing_from_timestamped_output():
    lines = [(0.0, "There are 3 cases"), (20.0, ""), (20.0, "Predicting a:"), (21.0, "done with a"),
             (22.5, "Predicting b:"), (24.0, "done with b"), (25.0, "Predicting c:"), (29.0, "done with c"),
             (29.0, "GPU prediction completed."), (33.0, "Segmentation export complete."), (34.0, "<exit>")]
    assert accuracy.prediction_timing(lines, 3) == {"s_per_case": pytest.approx(3.0), "predict_wall_s": 34.0,
                                                    "predict_startup_s": 20.0, "export_tail_s": 4.0}
    with pytest.raises(UserError, match="did not show 4 predicted cases"):
        accuracy.prediction_timing(lines, 4)
    with pytest.raises(UserError, match="output format"):  # the export never finished
        accuracy.prediction_timing(lines[:-2] + [(34.0, "<exit>")], 3)


# ----------------------------------------------------------------------------------------------- the results
def _header(**changes):
    header = {"benchmark": "accuracy", "schema": accuracy.SCHEMA, "device": "cpu",
              "budget": budgets.BUDGETS["tiny"].to_json(), "budget_text": budgets.BUDGETS["tiny"].describe(),
              "machine": "test CPU", "torch": "t", "nnunetv2": "n", "python": "p", "command": "python x",
              "started": "2026-01-01T00:00:00+00:00"}
    header.update(changes)
    return header


def test_results_store_reloads_and_refuses_other_budgets_and_machines(tmp_path):
    path = tmp_path / "accuracy-cpu-tiny.json"
    store = accuracy.ResultsStore(path, _header())
    store.set_run("hippocampus", "nnUNetTrainerNB", {"status": "done", "mean_dice": 0.5})
    store.set_run("hippocampus", "nnUNetTrainer", {"status": "done", "mean_dice": 0.4})
    again = accuracy.ResultsStore(path, _header(command="python y", started="later"))
    assert list(again.dataset("hippocampus")["runs"]) == ["nnUNetTrainer", "nnUNetTrainerNB"]  # table order
    assert again.run("hippocampus", "nnUNetTrainerNB")["mean_dice"] == 0.5
    assert again.data["command"] == "python y" and again.data["started"] == "2026-01-01T00:00:00+00:00"
    with pytest.raises(UserError, match="another budget"):
        accuracy.ResultsStore(path, _header(budget=budgets.BUDGETS["cpu"].to_json()))
    with pytest.raises(UserError, match="mix machines"):
        accuracy.ResultsStore(path, _header(machine="another CPU"))


def test_results_file_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "accuracy-cpu-tiny.json"
    store = accuracy.ResultsStore(path, _header())
    store.set_run("hippocampus", "nnUNetTrainer", {"status": "done"})
    before = path.read_text()

    def killed(*args):
        raise KeyboardInterrupt  # a kill between writing the new file and moving it into place

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.set_run("hippocampus", "nnUNetTrainerNB", {"status": "done"})
    assert path.read_text() == before and json.loads(before)["datasets"]["hippocampus"]["runs"] == \
        {"nnUNetTrainer": {"status": "done"}}


def test_pending_runs_skip_finished_retry_failed_and_record_absent(tmp_path):
    store = accuracy.ResultsStore(tmp_path / "r.json", _header())
    store.set_run("hippocampus", "nnUNetTrainer", {"status": "done"})
    store.set_run("hippocampus", "nnUNetTrainerNB", {"status": "failed", "reason": "boom"})
    store.set_run("hippocampus", "nnUNetTrainerBSA", {"status": "training"})  # killed mid-run
    exists = {"nnUNetTrainer", "nnUNetTrainerNB", "nnUNetTrainerBSA"}
    todo = accuracy.pending_runs(store, ["hippocampus", "isic2017"], list(budgets.TRAINERS),
                                 find=lambda name: object if name in exists else None)
    assert todo == [("hippocampus", "nnUNetTrainerNB"), ("hippocampus", "nnUNetTrainerBSA"),
                    ("isic2017", "nnUNetTrainer"), ("isic2017", "nnUNetTrainerNB"), ("isic2017", "nnUNetTrainerBSA")]
    absent = store.run("isic2017", "nnUNetTrainerMDSA")
    assert absent["status"] == "absent" and "no trainer nnUNetTrainerMDSA" in absent["reason"]
    assert store.run("hippocampus", "nnUNetTrainer") == {"status": "done"}


# ------------------------------------------------------------------------------------------- budgeted trainers
def test_every_budget_gives_every_existing_trainer_a_picklable_budgeted_class():
    for budget in budgets.BUDGETS.values():
        assert budget.iterations == budget.num_epochs * budget.num_iterations_per_epoch
        for name in budgets.TRAINERS:
            base = budgets.find_base_trainer(name)
            cls = getattr(budgets, budgets.budgeted_name(name, budget), None)
            if base is None:
                assert cls is None
                continue
            assert issubclass(cls, base) and cls.budget is budget
            assert (cls.short_schedule.num_epochs, cls.short_schedule.num_iterations_per_epoch,
                    cls.short_schedule.num_val_iterations_per_epoch) == \
                (budget.num_epochs, budget.num_iterations_per_epoch, budget.num_val_iterations_per_epoch)
            assert pickle.loads(pickle.dumps(cls)) is cls
    # the stock trainer is always there and gets the same mixin as ours
    stock, nb = budgets.nnUNetTrainer_benchcpu, budgets.nnUNetTrainerNB_benchcpu
    assert [c for c in stock.__mro__ if c.__module__ == budgets.__name__ and c is not stock] == \
        [c for c in nb.__mro__ if c.__module__ == budgets.__name__ and c is not nb]


def test_nnunet_finds_the_budgeted_trainers_through_the_bench_environment(tmp_path, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    env = accuracy.bench_environment(tmp_path, budgets.BUDGETS["tiny"])
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT) and env["nnUNet_compile"] == "f"
    monkeypatch.setenv("nnUNet_extTrainer", env["nnUNet_extTrainer"])
    found = recursive_find_trainer_class_by_name("nnUNetTrainerNB_benchtiny")
    assert found is budgets.nnUNetTrainerNB_benchtiny  # the same object: it pickles in nnU-Net's processes


# --------------------------------------------------------------------------------------------------- reports
def _results():
    done = dict(status="done", dice={"Anterior": 0.81, "Posterior": 0.79}, mean_dice=0.80,
                hd95={"Anterior": 2.5, "Posterior": 3.0}, s_per_iter=0.2, s_per_case=1.5,
                peak_memory_bytes=3 * 2**30, params=5_600_000, flops=38_280_000_000)
    runs = {"nnUNetTrainer": done,
            "nnUNetTrainerNB": dict(done, mean_dice=0.806, s_per_iter=0.21),
            "nnUNetTrainerBSA": dict(done, mean_dice=0.79, s_per_iter=0.25),
            "nnUNetTrainerMDSA": dict(done, mean_dice=0.799, s_per_iter=0.35),
            "nnUNetTrainerBilateral": {"status": "absent", "reason": "no trainer nnUNetTrainerBilateral yet"}}
    dataset = {"title": "MSD Hippocampus", "dataset_id": 4, "configuration": "3d_fullres", "training_cases": 260,
               "patch_size": [40, 56, 40], "batch_size": 9, "distance_unit": "mm", "prepared": True,
               "predicted_cases": ["a", "b"], "runs": runs}
    return dict(_header(device="cuda", machine="NVIDIA H100", budget=budgets.BUDGETS["gpu"].to_json(),
                        budget_text=budgets.BUDGETS["gpu"].describe(),
                        command="python benchmarks/accuracy.py --budget gpu"),
                updated="2026-02-03T10:00:00+00:00", datasets={"hippocampus": dataset})


def test_section_states_command_budget_machine_date_and_the_table(tmp_path):
    path = tmp_path / "accuracy-cuda-gpu.json"
    path.write_text(json.dumps(_results()))
    accuracy.plot(_results(), path.with_suffix(".png"))
    section = accuracy.render_section([path], docs_root=tmp_path)
    assert "### `gpu` budget on NVIDIA H100 (2026-02-03)" in section
    assert "Command: `python benchmarks/accuracy.py --budget gpu`" in section
    assert "50 epochs x 250 iterations" in section and "torch.compile in training on" in section
    assert "Ran from 2026-01-01T00:00:00+00:00 to 2026-02-03T10:00:00+00:00" in section
    assert ("| MSD Hippocampus | stock nnU-Net | 0.800 | Anterior 0.810, Posterior 0.790 | Anterior 2.50, "
            "Posterior 3.00 mm | 0.200 | 1.50 | 3.00 GiB | 5.60 M | 38.28 G | – | done |") in section
    assert "| MSD Hippocampus | NB | 0.806 |" in section and "| +0.6, 1.05x | done |" in section
    assert "absent: no trainer nnUNetTrainerBilateral yet" in section
    # the targets: within 0.5 Dice points of stock, at most 1.5x its time per iteration
    assert "- BSA: Dice -1.00 points (missed), time per iteration 1.25x (met)" in section
    assert "- MDSA: Dice -0.10 points (met), time per iteration 1.75x (missed)" in section
    assert "- Bilateral: absent" in section
    assert "(accuracy-cuda-gpu.png)" in section


def test_splice_section_rewrites_only_between_the_markers():
    begin, end = accuracy.MARKERS
    doc = f"# Benchmarks\n\nintro\n{begin}\nold text\n{end}\n\n## Other\nkept\n"
    once = accuracy.splice_section(doc, "new section\n")
    assert once == f"# Benchmarks\n\nintro\n{begin}\nnew section\n{end}\n\n## Other\nkept\n"
    assert accuracy.splice_section(once, "new section\n") == once
    for broken in ("no markers", f"{end}\n{begin}", f"{begin}{end}{begin}{end}"):
        with pytest.raises(UserError, match="accuracy:begin"):
            accuracy.splice_section(broken, "x")


def test_plot_writes_a_png_with_one_panel_per_dataset(tmp_path):
    results = _results()
    results["datasets"]["isic2017"] = dict(results["datasets"]["hippocampus"], title="ISIC 2017")
    path = accuracy.plot(results, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width > 1.8 * height  # two panels side by side
    results["datasets"] = {"hippocampus": dict(results["datasets"]["hippocampus"], runs={})}
    assert accuracy.plot(results, tmp_path / "none.png") is None  # nothing finished: no plot


def test_main_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    assert accuracy.main(["--budget", "huge", "--out-dir", str(tmp_path)]) == 2
    assert "unknown budget huge: choose from tiny, cpu, gpu" in capsys.readouterr().err
    assert accuracy.main(["--budget", "tiny", "--trainers", "nnUNetTrainerX", "--out-dir", str(tmp_path)]) == 2
    assert "unknown trainer nnUNetTrainerX" in capsys.readouterr().err
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n")
    assert accuracy.main(["--report-only", "--update-docs", "--docs", str(docs), "--out-dir", str(tmp_path)]) == 2
    assert "needs exactly one <!-- accuracy:begin -->" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_harness_end_to_end_on_hippocampus(shared_data, tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    args = ["--budget", "tiny", "--datasets", "hippocampus", "--trainers", "nnUNetTrainer",
            "--work", str(work), "--data", str(shared_data), "--out-dir", str(out),
            "--section", str(tmp_path / "section.md")]
    assert accuracy.main(args) == 0
    results = json.loads((out / "accuracy-cpu-tiny.json").read_text())
    dataset = results["datasets"]["hippocampus"]
    assert dataset["prepared"] and dataset["training_cases"] == 8 and len(dataset["predicted_cases"]) == 1
    assert list(dataset["runs"]) == ["nnUNetTrainer"]  # one trainer keeps CI short; the unit tests cover several
    results_root = work / "nnUNet_results" / "Dataset004_Hippocampus"
    for trainer, r in dataset["runs"].items():
        assert r["status"] == "done", r
        assert r["trainer_class"] == f"{trainer}_benchtiny"
        assert set(r["dice"]) == {"Anterior", "Posterior"} and all(0 <= v <= 1 for v in r["dice"].values())
        assert r["mean_dice"] == pytest.approx(np.mean(list(r["dice"].values())))
        assert r["s_per_iter"] > 0 and r["timed_epochs"] == 1 and r["warmup_excluded"]
        assert 0 < r["s_per_case"] < r["predict_wall_s"] and r["predict_startup_s"] > 0
        assert r["peak_memory_bytes"] > 100 * 2**20 and "RSS" in r["peak_memory_kind"]
        assert r["flops"] > 0 and r["flops_input"] == [1, 1, *dataset["patch_size"]]
        fold = results_root / f"{trainer}_benchtiny__nnUNetPlans__3d_fullres" / "fold_0"
        timing = json.loads((fold / budgets.TIMING_FILE).read_text())
        # the budget: 2 epochs of 1 iteration, the first flagged as warm-up
        assert {k: (e["iterations"], e["first_in_session"]) for k, e in timing["epochs"].items()} == \
            {"0": (1, True), "1": (1, False)}
        assert r["s_per_iter"] == pytest.approx(timing["epochs"]["1"]["train_s"])
        assert not (fold / "validation").exists()  # nnU-Net's own final validation skipped
    stock = dataset["runs"]["nnUNetTrainer"]
    assert (out / "accuracy-cpu-tiny.png").read_bytes()[:4] == b"\x89PNG"
    section = (tmp_path / "section.md").read_text()
    assert "| MSD Hippocampus | stock nnU-Net |" in section

    # run again: nothing is redone
    logs = sorted(results_root.glob("*/fold_0/training_log_*.txt"))
    assert accuracy.main(args) == 0
    again = json.loads((out / "accuracy-cpu-tiny.json").read_text())["datasets"]["hippocampus"]["runs"]
    assert again == dataset["runs"]
    assert sorted(results_root.glob("*/fold_0/training_log_*.txt")) == logs

    # killed after training, before the scores were stored: scored again, not retrained
    results["datasets"]["hippocampus"]["runs"]["nnUNetTrainer"] = {"status": "training", "train_wall_s": 1.0}
    (out / "accuracy-cpu-tiny.json").write_text(json.dumps(results))
    assert accuracy.main(args) == 0
    rescored = json.loads((out / "accuracy-cpu-tiny.json").read_text())["datasets"]["hippocampus"]["runs"]
    assert rescored["nnUNetTrainer"]["status"] == "done" and rescored["nnUNetTrainer"]["train_wall_s"] == 1.0
    assert rescored["nnUNetTrainer"]["dice"] == stock["dice"]  # the same model, predicted again
    assert sorted(results_root.glob("*/fold_0/training_log_*.txt")) == logs

    # killed during epoch 1: what nnU-Net leaves is epoch 0's checkpoint_latest.pth (current_epoch 1), no final one
    import torch

    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["current_epoch"] = 1
    torch.save(checkpoint, fold / "checkpoint_latest.pth")
    (fold / "checkpoint_final.pth").unlink()
    assert accuracy.training_state(fold) == "resume"
    results = json.loads((out / "accuracy-cpu-tiny.json").read_text())
    results["datasets"]["hippocampus"]["runs"]["nnUNetTrainer"] = {"status": "training", "train_wall_s": 1.0}
    (out / "accuracy-cpu-tiny.json").write_text(json.dumps(results))
    assert accuracy.main(args) == 0
    resumed = json.loads((out / "accuracy-cpu-tiny.json").read_text())["datasets"]["hippocampus"]["runs"]
    assert resumed["nnUNetTrainer"]["status"] == "done" and resumed["nnUNetTrainer"]["train_wall_s"] > 1.0
    assert (fold / "checkpoint_final.pth").is_file() and accuracy.training_state(fold) == "done"
    assert len(sorted(results_root.glob("*/fold_0/training_log_*.txt"))) == len(logs) + 1  # one more session
    timing = json.loads((fold / budgets.TIMING_FILE).read_text())
    assert [s["start_epoch"] for s in timing["sessions"]] == [0, 1]  # continued at epoch 1, not from scratch
    assert timing["epochs"]["0"]["first_in_session"] and timing["epochs"]["1"]["first_in_session"]
    # both epochs now open a session: none is free of warm-up, and the record says so
    assert resumed["nnUNetTrainer"]["timed_epochs"] == 2 and not resumed["nnUNetTrainer"]["warmup_excluded"]
