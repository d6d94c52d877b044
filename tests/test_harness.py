"""The harness's pieces (``nnunet_sparseattn.harness``), each without nnU-Net training: budgets and the budgeted
trainers nnU-Net finds by name, the timing records, the command runner, folder lookups and held-out copies, scoring
(Dice against nnU-Net's, HD95 against hand-computed distances), network cost and attention layout, a trainer built
without data."""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from plans_cases import HIPPOCAMPUS_3D, dataset_json, plans_for

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness import budgets, commands, datasets, networks, scoring
from nnunet_sparseattn.harness.trainers import find_trainer_class


# ------------------------------------------------------------------------------------------------- budgets
def test_named_and_parsed_budgets_and_refusals():
    assert budgets.parse_budget("cpu") is budgets.BUDGETS["cpu"]
    b = budgets.parse_budget("20x50")
    assert (
        b.name,
        b.num_epochs,
        b.num_iterations_per_epoch,
        b.num_val_iterations_per_epoch,
        b.seed,
        b.max_batch_size,
    ) == ("20x50", 20, 50, 10, 0, None)
    assert budgets.parse_budget("10x20b4").max_batch_size == 4
    assert budgets.parse_budget("3x2").num_val_iterations_per_epoch == 1  # at least one
    seeded = budgets.parse_budget("10x20b4s3")
    assert (seeded.name, seeded.seed, seeded.max_batch_size, seeded.iterations) == ("10x20b4s3", 3, 4, 200)
    assert (budgets.parse_budget("10x20s2").seed, budgets.parse_budget("10x20s2").max_batch_size) == (2, None)
    for bad in ("huge", "20x", "0x50", "20x0", "20 x 50", "20x50b0", "20x50s0", "20x50s", "20x50s1b4"):
        with pytest.raises(UserError, match="neither a named budget"):
            budgets.parse_budget(bad)
    for budget in budgets.BUDGETS.values():
        assert budget.iterations == budget.num_epochs * budget.num_iterations_per_epoch
        assert f"{budget.num_epochs} epochs x {budget.num_iterations_per_epoch} iterations" in budget.describe()


@pytest.mark.parametrize(
    "name",
    [
        "nnUNetTrainer_benchtiny",
        "nnUNetTrainerNB_benchcpu",
        "nnUNetTrainerBSA_bench3x2",
        "nnUNetTrainerMDSA_AdamW_bench10x20b4",
    ],
)
def test_budgeted_trainers_are_made_from_their_name_and_pickle(name):
    cls = getattr(budgets, name)
    base_name, _, budget_name = name.rpartition("_bench")
    base, budget = find_trainer_class(base_name), budgets.parse_budget(budget_name)
    assert cls.__name__ == budgets.budgeted_name(base_name, budget) == name
    assert issubclass(cls, base) and cls.budget == budget and cls.__module__ == budgets.__name__
    assert (
        cls.short_schedule.num_epochs,
        cls.short_schedule.num_iterations_per_epoch,
        cls.short_schedule.num_val_iterations_per_epoch,
        cls.short_schedule.max_batch_size,
    ) == (
        budget.num_epochs,
        budget.num_iterations_per_epoch,
        budget.num_val_iterations_per_epoch,
        budget.max_batch_size,
    )
    assert getattr(budgets, name) is cls  # made once
    assert pickle.loads(pickle.dumps(cls)) is cls


def test_stock_and_our_trainers_get_the_same_mixin_and_unknown_names_do_not_exist():
    stock, nb = budgets.nnUNetTrainer_benchcpu, budgets.nnUNetTrainerNB_benchcpu
    assert (
        [c for c in stock.__mro__ if c.__module__ == budgets.__name__ and c is not stock]
        == [c for c in nb.__mro__ if c.__module__ == budgets.__name__ and c is not nb]
        == [budgets.BudgetMixin]
    )
    for missing in ("nnUNetTrainerNope_benchcpu", "nnUNetTrainer_benchhuge", "nnUNetTrainer_bench", "something"):
        assert not hasattr(budgets, missing)
    with pytest.raises(UserError, match="no nnU-Net trainer named nnUNetTrainerNope"):
        find_trainer_class("nnUNetTrainerNope")
    # nnU-Net's own variants are found by nnU-Net's lookup
    assert find_trainer_class("nnUNetTrainerNoMirroring").__module__.startswith("nnunetv2.")


def test_nnunet_finds_budgeted_trainers_through_the_environment_and_keeps_what_was_set(tmp_path, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_sparseattn_autodiscovery as autodiscovery
    from nnunet_sparseattn.discovery import ext_trainer_path

    theirs = tmp_path / "their_trainers"
    theirs.mkdir()
    monkeypatch.setenv("nnUNet_extTrainer", str(theirs))
    env = commands.nnunet_environment(tmp_path / "raw", tmp_path / "pre", tmp_path / "res", budgeted=True)
    # the user's folder first; ours where no startup hook will add it in nnU-Net's processes; the budget shim last
    ours = [] if autodiscovery.startup_outcome == autodiscovery.ADDED else [str(ext_trainer_path())]
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(theirs), *ours, str(commands.BUDGET_SHIM)]
    assert commands.with_budget_shim(env["nnUNet_extTrainer"]) == env["nnUNet_extTrainer"]  # appended once
    assert all(Path(env[n]).is_dir() for n in commands.NNUNET_FOLDERS)
    # as nnU-Net's processes have it once their startup hook ran (the hook appends ours where it is not listed)
    environ = {"nnUNet_extTrainer": env["nnUNet_extTrainer"]}
    autodiscovery.add_shim_folder(environ)
    monkeypatch.setenv("nnUNet_extTrainer", environ["nnUNet_extTrainer"])
    found = recursive_find_trainer_class_by_name("nnUNetTrainerBSA_bench2x3")
    assert found is budgets.nnUNetTrainerBSA_bench2x3  # the same object: it pickles in nnU-Net's processes
    assert recursive_find_trainer_class_by_name("nnUNetTrainerNB") is find_trainer_class("nnUNetTrainerNB")


def _epoch(train_s, iterations, first):
    return {"train_s": train_s, "iterations": iterations, "first_in_session": first}


def test_seconds_per_iteration_excludes_each_sessions_first_epoch():
    timing = {
        "epochs": {
            "0": _epoch(50.0, 5, True),
            "1": _epoch(10.0, 5, False),
            "2": _epoch(30.0, 5, True),
            "3": _epoch(14.0, 5, False),
        }
    }
    assert budgets.seconds_per_iteration(timing) == {
        "s_per_iter": pytest.approx(24.0 / 10),
        "timed_epochs": 2,
        "warmup_excluded": True,
    }
    only_warmup = {"epochs": {"0": _epoch(8.0, 4, True)}}
    assert budgets.seconds_per_iteration(only_warmup) == {
        "s_per_iter": 2.0,
        "timed_epochs": 1,
        "warmup_excluded": False,
    }
    with pytest.raises(ValueError, match="no finished epoch"):
        budgets.seconds_per_iteration({"epochs": {}, "sessions": []})


def test_restart_timing_keeps_checkpointed_epochs_only():
    timing = {
        "epochs": {str(e): _epoch(1.0, 1, e == 0) for e in range(4)},
        "sessions": [{"start_epoch": 0}],
        "iterations": [{"epoch": e} for e in (0, 0, 1, 2, 3)],
    }
    resumed = budgets.restart_timing(timing, 2)  # --c from the checkpoint written after epoch 1
    assert sorted(resumed["epochs"]) == ["0", "1"] and resumed["sessions"] == [{"start_epoch": 0}]
    assert resumed["iterations"] == [{"epoch": 0}, {"epoch": 0}, {"epoch": 1}]
    empty = {"epochs": {}, "sessions": [], "iterations": []}
    assert budgets.restart_timing(timing, 0) == empty  # a fresh run forgets a killed one
    assert budgets.restart_timing(None, 3) == empty


def test_peak_memory_is_the_largest_over_sessions():
    timing = {"sessions": [{"peak_bytes": 5, "kind": "rss"}, {"start_epoch": 2}, {"peak_bytes": 9, "kind": "rss"}]}
    assert budgets.peak_memory(timing) == {"peak_memory_bytes": 9, "peak_memory_kind": "rss"}
    assert budgets.peak_memory({"sessions": []}) == {"peak_memory_bytes": None, "peak_memory_kind": None}


def test_summarize_iterations():
    iterations = [
        {"step_s": s, "loss": loss, "grad_norm": n}
        for s, loss, n in [(9.0, 2.0, 12.0), (1.0, 1.8, 3.0), (3.0, 1.0, 0.5), (2.0, 0.8, 12.0)]
    ]
    summary = budgets.summarize_iterations(iterations)
    assert summary["step_s_mean"] == 2.0  # the first step (warm-up) is left out
    assert (summary["loss_first_quarter"], summary["loss_last_quarter"]) == (2.0, 0.8)
    assert summary["iterations_clipped_at_12"] == 2 and summary["iterations_grad_norm_over_1"] == 3
    assert (summary["grad_norm_median"], summary["grad_norm_max"]) == (7.5, 12.0)
    skipped = iterations + [{"step_s": 1.0, "loss": 0.7, "grad_norm": None}]  # a step GradScaler skipped
    assert budgets.summarize_iterations(skipped)["grad_norm_max"] == 12.0
    assert budgets.summarize_iterations([]) == {}


def test_training_state_decides_between_skip_continue_and_fresh(tmp_path):
    assert budgets.training_state(tmp_path) == "fresh"
    (tmp_path / "checkpoint_best.pth").touch()
    assert budgets.training_state(tmp_path) == "resume"
    (tmp_path / "checkpoint_latest.pth").touch()
    assert budgets.training_state(tmp_path) == "resume"
    (tmp_path / "checkpoint_final.pth").touch()
    assert budgets.training_state(tmp_path) == "done"


def test_progress_lines_round_trip():
    record = {"epoch": 3, "num_epochs": 8, "train_loss": -0.5, "mean_pseudo_dice": 0.7}
    assert budgets.parse_progress(budgets.PROGRESS_TAG + json.dumps(record)) == record
    assert budgets.parse_progress("2026-01-01 12:00:00.000000: Epoch 3") is None


def test_budget_mixin_records_every_iteration_and_epoch(trainer_without_data):
    """The mixin on nnU-Net's real trainer (a tiny network, no data): seeded, one record per training step with the
    gradient norm the optimizer stepped with, one timing record per epoch with the process's peak memory."""
    budget_class = budgets.nnUNetTrainer_bench2x3
    arch, _ = HIPPOCAMPUS_3D
    arch = dict(arch, features_per_stage=[4, 8, 16, 32])
    plans = plans_for((arch, (16, 16, 16)), batch_size=2)
    meta = dataset_json(num_training=2)
    trainer = trainer_without_data(budget_class, plans, "3d_fullres", meta)
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.save_every) == (2, 3, 1)
    weights = next(trainer.network.parameters()).detach().clone()
    again = trainer_without_data(budget_class, plans, "3d_fullres", meta)
    assert torch.equal(next(again.network.parameters()), weights)  # seeded before nnU-Net builds the network
    # what the mixin's on_train_start adds to nnU-Net's (which opens the dataset)
    trainer._timing = budgets.restart_timing(None, 0)
    trainer._timing["sessions"].append({"start_epoch": 0, "device": "cpu"})
    trainer.optimizer.register_step_pre_hook(trainer._record_grad_norm)
    trainer.on_train_epoch_start()
    g = torch.Generator().manual_seed(0)
    outputs = []
    for _ in range(trainer.num_iterations_per_epoch):
        data = torch.randn(2, 1, 16, 16, 16, generator=g)
        with torch.no_grad():
            shapes = [o.shape[2:] for o in trainer.network(data)]
        target = [torch.randint(0, 3, (2, 1, *s), generator=g).float() for s in shapes]
        outputs.append(trainer.train_step({"data": data, "target": target}))
    trainer.on_train_epoch_end(outputs)
    timing = json.loads((Path(trainer.output_folder) / budgets.TIMING_FILE).read_text())
    assert timing["epochs"]["0"]["iterations"] == 3 and timing["epochs"]["0"]["first_in_session"]
    assert timing["epochs"]["0"]["train_s"] > 0 and timing["sessions"][0]["peak_bytes"] > 50 * 2**20
    assert timing["epochs"]["0"]["train_cpu_s"] > 0
    records = timing["iterations"]
    assert [r["epoch"] for r in records] == [0, 0, 0]
    assert all(r["grad_norm"] is not None and 0 < r["grad_norm"] <= 12.0 + 1e-4 for r in records)
    assert all(math.isfinite(r["loss"]) and r["step_s"] > 0 and r["lr"] == 1e-2 for r in records)
    assert records[0]["batch_checksum"] != records[1]["batch_checksum"]
    assert records[0]["batch_checksum"] == pytest.approx(
        float(torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)).double().sum())
    )


def test_prediction_timing_from_timestamped_output():
    lines = [
        (0.0, "There are 3 cases"),
        (20.0, ""),
        (20.0, "Predicting a:"),
        (21.0, "done with a"),
        (22.5, "Predicting b:"),
        (24.0, "done with b"),
        (25.0, "Predicting c:"),
        (29.0, "done with c"),
        (29.0, "GPU prediction completed."),
        (33.0, "Segmentation export complete."),
        (34.0, "<exit>"),
    ]
    assert commands.prediction_timing(lines, 3) == {
        "s_per_case": pytest.approx(3.0),
        "predict_wall_s": 34.0,
        "predict_startup_s": 20.0,
        "export_tail_s": 4.0,
    }
    with pytest.raises(UserError, match="did not show 4 predicted cases"):
        commands.prediction_timing(lines, 4)
    with pytest.raises(UserError, match="output format"):  # the export never finished
        commands.prediction_timing(lines[:-2] + [(34.0, "<exit>")], 3)


# ------------------------------------------------------------------------------------------- the runner
@pytest.fixture
def fake_command(tmp_path, monkeypatch):
    """A stand-in console script beside a fake interpreter: prints two lines, exits with its first argument."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nnUNetv2_fake"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nprint('first line')\nprint('second', flush=True)\n"
        "print('oops', file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    return script


def test_run_command_streams_logs_and_times(fake_command, tmp_path, capsys):
    seen = []
    log = tmp_path / "run.log"
    lines = commands.run_command(["nnUNetv2_fake", 0], dict(os.environ), log, on_line=seen.append, echo=False)
    assert seen == ["first line", "second", "oops"]
    assert [text for _, text in lines] == ["first line", "second", "oops", "<exit>"]
    assert all(a <= b for (a, _), (b, _) in zip(lines, lines[1:]))
    assert "first line\nsecond\noops\n" in log.read_text() and "nnUNetv2_fake 0" in log.read_text()
    assert capsys.readouterr().out == ""  # echo off, output in the log
    commands.run_command(["nnUNetv2_fake", 0], dict(os.environ))
    out = capsys.readouterr().out
    assert "$ nnUNetv2_fake 0" in out and "first line" in out and "(nnUNetv2_fake took" in out


def test_a_failing_command_is_one_line_naming_its_log(fake_command, tmp_path):
    log = tmp_path / "run.log"
    with pytest.raises(UserError, match=rf"^nnUNetv2_fake failed with exit code 3: see {log}$"):
        commands.run_command(["nnUNetv2_fake", 3], dict(os.environ), log, echo=False)
    with pytest.raises(UserError, match="nnUNetv2_nope is not on PATH"):
        commands.run_command(["nnUNetv2_nope"], dict(os.environ))


# -------------------------------------------------------------------------------------------------- folders
def _raw_case(root: Path, folder: str, case: str, channels: int = 1, ending: str = ".nii.gz") -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    if folder.startswith("images"):
        for c in range(channels):
            (root / folder / f"{case}_{c:04d}{ending}").write_text(case)
    else:
        (root / folder / f"{case}{ending}").write_text(case)


def test_dataset_lookup_and_refusal(tmp_path):
    (tmp_path / "Dataset004_Hippocampus").mkdir()
    assert datasets.dataset_folder(tmp_path, 4) == tmp_path / "Dataset004_Hippocampus"
    assert datasets.dataset_folder(tmp_path, 5) is None
    assert [datasets.parse_dataset(v) for v in (4, "4", "004", "Dataset004_Hippocampus")] == [4, 4, 4, 4]
    with pytest.raises(UserError, match="neither an id"):
        datasets.parse_dataset("Hippocampus")
    with pytest.raises(UserError, match=r"no Dataset005_\* in nnUNet_raw .*: it holds Dataset004_Hippocampus"):
        datasets.require_dataset(tmp_path, 5, "nnUNet_raw")
    env = {"nnUNet_preprocessed": str(tmp_path), "nnUNet_results": str(tmp_path / "results")}
    assert (
        datasets.model_folder(env, 4, "nnUNetTrainerNB", "3d_fullres")
        == tmp_path / "results" / "Dataset004_Hippocampus" / "nnUNetTrainerNB__nnUNetPlans__3d_fullres"
    )


def test_nnunet_folders_and_plans_files_are_found_or_refused_in_one_line(tmp_path, monkeypatch):
    """The one lookup of nnU-Net's folders and a dataset's plans that plan, info and compare share."""
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with pytest.raises(UserError, match=r"^nnUNet_preprocessed is not set: export nnUNet_preprocessed=\S+ \(why\)$"):
        datasets.nnunet_folder("nnUNet_preprocessed", why="why")
    with pytest.raises(UserError, match="nnUNet_raw is .*nowhere, which does not exist"):
        datasets.nnunet_folder("nnUNet_raw", tmp_path / "nowhere")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert datasets.nnunet_folder("nnUNet_preprocessed") == tmp_path.resolve()
    with pytest.raises(
        UserError,
        match=r"no Dataset004_\* in nnUNet_preprocessed .*; plan it first: "
        r"nnUNetv2_plan_and_preprocess -d 4$",
    ):
        datasets.plans_file(tmp_path, 4, "nnUNetPlans")
    (tmp_path / "Dataset004_Hippocampus").mkdir()
    with pytest.raises(
        UserError,
        match=r"nnUNetPlans.json does not exist: plan the dataset first "
        r"\(nnUNetv2_plan_and_preprocess -d 4\), or name existing plans",
    ):
        datasets.plans_file(tmp_path, 4, "nnUNetPlans")
    path = tmp_path / "Dataset004_Hippocampus" / "nnUNetPlans.json"
    path.write_text(json.dumps({"configurations": {"3d_fullres": {}, "2d": {}}}))
    assert datasets.plans_file(tmp_path, 4, "nnUNetPlans") == path
    assert datasets.read_plans(path, "2d") == datasets.read_plans(path) == json.loads(path.read_text())
    with pytest.raises(
        UserError,
        match="^the plans nnUNetPlans of Dataset004_Hippocampus have no configuration "
        "3d_lowres: choose one of 3d_fullres, 2d$",
    ):
        datasets.read_plans(path, "3d_lowres")


def test_heldout_source_copies_and_validation_cases(tmp_path):
    raw = tmp_path / "Dataset001_X"
    for case in ("a", "b", "c"):
        _raw_case(raw, "imagesTr", case, channels=2)
        _raw_case(raw, "labelsTr", case)
    assert datasets.heldout_source(raw).kind == "validation"
    _raw_case(raw, "imagesTs", "t1", channels=2)
    _raw_case(raw, "labelsTs", "t1")
    source = datasets.heldout_source(raw)
    assert source == datasets.HeldOut("test", raw / "imagesTs", raw / "labelsTs")
    assert datasets.labelled_cases(source.labels, ".nii.gz") == ["t1"]
    training = datasets.HeldOut("training", raw / "imagesTr", raw / "labelsTr")
    images, labels = tmp_path / "out" / "images", tmp_path / "out" / "labels"
    assert datasets.copy_cases(["c", "a"], training, images, labels, ".nii.gz") == ["c", "a"]
    assert sorted(p.name for p in images.iterdir()) == [
        "a_0000.nii.gz",
        "a_0001.nii.gz",
        "c_0000.nii.gz",
        "c_0001.nii.gz",
    ]
    assert sorted(p.name for p in labels.iterdir()) == ["a.nii.gz", "c.nii.gz"]
    with pytest.raises(UserError, match="case zz lacks its images"):
        datasets.copy_cases(["zz"], training, images, labels, ".nii.gz")
    pre = tmp_path / "pre"
    pre.mkdir()
    with pytest.raises(UserError, match="nnUNetv2_train writes it"):
        datasets.validation_cases(pre, 0)
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["c", "b"]}]))
    assert datasets.validation_cases(pre, 0) == ["b", "c"]


def test_downsize_2d_pairs_writes_convert_2d_layout(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    for name in ("A", "B", "C"):
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "images" / f"{name}.jpg")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}_segmentation.png")
    out = datasets.downsize_2d_pairs(tmp_path / "images", tmp_path / "masks", tmp_path / "small", cases=2, size=8)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["A.png", "B.png"]
    mask = np.asarray(Image.open(out / "masks" / "A_segmentation.png"))
    assert mask.shape == (8, 8) and set(np.unique(mask)) == {0, 255}  # nearest: still binary


# -------------------------------------------------------------------------------------------------- scoring
def test_hd95_known_answers():
    ref = np.zeros((6, 7, 8), bool)
    ref[1:5, 2:6, 3:7] = True
    assert scoring.hd95(ref, ref, (1.0, 2.0, 3.0)) == 0.0

    # one voxel against one voxel 3 voxels away along the axis spaced 2 mm: 6 mm
    a, b = np.zeros((5, 9, 5), bool), np.zeros((5, 9, 5), bool)
    a[2, 1, 2], b[2, 4, 2] = True, True
    assert scoring.hd95(a, b, (1.0, 2.0, 1.0)) == pytest.approx(6.0)
    assert scoring.hd95(b, a, (1.0, 2.0, 1.0)) == pytest.approx(6.0)  # symmetric

    # a 20-voxel line (every voxel on its boundary) against one voxel at its end, 0.5 mm apart along the line:
    # distances line->voxel 0.5, 1.0, ..., 10.0 and voxel->line 0.5; MONAI takes the larger of the two directed
    # 95th percentiles: numpy's linear 95th percentile of 0.5..10.0 is 9.525 mm
    line, point = np.zeros((24, 3), bool), np.zeros((24, 3), bool)
    line[1:21, 1], point[0, 1] = True, True
    assert scoring.hd95(line, point, (0.5, 4.0)) == pytest.approx(9.525)


def test_hd95_is_undefined_for_an_empty_mask_and_checks_dimensions():
    full, empty = np.ones((4, 4), bool), np.zeros((4, 4), bool)
    assert math.isnan(scoring.hd95(empty, full, (1.0, 1.0)))
    assert math.isnan(scoring.hd95(full, empty, (1.0, 1.0)))
    with pytest.raises(ValueError, match="same dimensions"):
        scoring.hd95(full, full, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same dimensions"):
        scoring.hd95(full, np.ones((4, 5), bool), (1.0, 1.0))


def test_drop_singleton_axes_keeps_the_real_spatial_axes():
    seg2d, spacing = scoring.drop_singleton_axes(np.zeros((1, 1, 5, 6)), (999.0, 1.0, 1.0))
    assert seg2d.shape == (5, 6) and spacing == (1.0, 1.0)
    seg3d, spacing = scoring.drop_singleton_axes(np.zeros((1, 3, 4, 5)), (2.0, 1.0, 0.5))
    assert seg3d.shape == (3, 4, 5) and spacing == (2.0, 1.0, 0.5)


def _plans_file(tmp_path: Path) -> Path:
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans_for(HIPPOCAMPUS_3D)))
    return path


def test_scores_read_files_with_nnunet_readers_and_match_nnunets_dice(tmp_path):
    """2D PNGs (nnU-Net's dummy axis dropped): one pixel against one; cases without the class counted, not scored;
    Dice as nnU-Net's evaluation of the same folders computes it."""
    from PIL import Image

    ref_dir, pred_dir = tmp_path / "png_ref", tmp_path / "png_pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    cases = {"a": ((5, 5), (5, 9)), "b": (None, None), "c": ((3, 3), None), "d": ((2, 2), (2, 2))}
    for case, (r, p) in cases.items():
        for folder, pixel in ((ref_dir, r), (pred_dir, p)):
            img = np.zeros((12, 14), np.uint8)
            if pixel is not None:
                img[pixel] = 1
            Image.fromarray(img).save(folder / f"{case}.png")
    meta = dataset_json(["lesion"], channels="R", file_ending=".png", overwrite_image_reader_writer="NaturalImage2DIO")
    out = scoring.score_predictions(pred_dir, ref_dir, sorted(cases), meta, _plans_file(tmp_path))
    assert out["hd95"] == {"lesion": pytest.approx(2.0)}  # a: 4 px, d: 0 px
    assert out["mean_hd95"] == pytest.approx(2.0)
    assert out["hd95_scored_cases"] == {"lesion": 2} and out["hd95_undefined_cases"] == {"lesion": 1}
    assert {c: v["dice"]["lesion"] for c, v in out["per_case"].items()} == {"a": 0.0, "b": None, "c": 0.0, "d": 1.0}
    assert out["per_case"]["b"]["mean_dice"] is None and out["per_case"]["d"]["mean_dice"] == 1.0
    assert out["dice"] == {"lesion": pytest.approx(1 / 3)} and out["mean_dice"] == pytest.approx(1 / 3)
    # nnU-Net's own evaluation of the folders: the same per-class mean
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    compute_metrics_on_folder2(
        str(ref_dir),
        str(pred_dir),
        str(tmp_path / "dataset.json"),
        str(_plans_file(tmp_path)),
        str(tmp_path / "summary.json"),
        num_processes=1,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean"]["1"]["Dice"] == pytest.approx(out["dice"]["lesion"])
    with pytest.raises(UserError, match="the prediction of case e is missing"):
        scoring.score_predictions(pred_dir, ref_dir, ["a", "e"], meta, _plans_file(tmp_path))


def test_scores_of_3d_nifti_use_the_spacing_in_the_right_axis_order(tmp_path):
    """SimpleITK's x, y, z spacing is the array's last axis first: one voxel against one 2 slices away, 3 mm each."""
    import SimpleITK as sitk

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
    meta = dataset_json(["one", "two"])
    out = scoring.score_predictions(pred_dir, ref_dir, ["case"], meta, _plans_file(tmp_path))
    assert out["hd95"] == {"one": pytest.approx(6.0), "two": pytest.approx(0.0)}  # 2 slices x 3 mm
    assert out["mean_hd95"] == pytest.approx(3.0)
    assert out["dice"] == {"one": 0.0, "two": 1.0} and out["mean_dice"] == 0.5


def test_class_names_of_labels_and_regions():
    labels = {"background": 0, "organ": 1, "vessel": 2, "ignore": 3}
    assert scoring.class_names({"labels": labels}, [1, 2]) == {1: "organ", 2: "vessel"}
    regions = {"background": 0, "whole": [1, 2], "core": [2]}
    assert scoring.class_names({"labels": regions}, [(1, 2), (2,)]) == {(1, 2): "whole", (2,): "core"}


# ------------------------------------------------------------------------------------------------- networks
def test_network_cost_and_attention_layout_on_hippocampus_plans():
    plans, meta = plans_for(HIPPOCAMPUS_3D), dataset_json()
    stock = networks.network_cost(find_trainer_class("nnUNetTrainer"), plans, "3d_fullres", meta)
    assert stock["flops_input"] == [1, 1, 40, 56, 40] and 5.5e6 < stock["params"] < 5.7e6  # 5.60 M (docs/networks.md)
    layouts = {}
    for name in ("nnUNetTrainer", "nnUNetTrainerNB", "nnUNetTrainerBSA", "nnUNetTrainerMDSA", "nnUNetTrainerBilateral"):
        cls, kwargs = networks.network_kwargs(find_trainer_class(name), plans, "3d_fullres")
        layouts[name] = networks.attention_layout(cls, kwargs, (40, 56, 40))
    assert layouts["nnUNetTrainer"] == layouts["nnUNetTrainerNB"] == []
    assert networks.describe_layout([]) == "none (convolutions only)"
    # stage shapes 40x56x40, 20x28x20, 10x14x10, 5x7x5
    bsa = layouts["nnUNetTrainerBSA"]
    assert [(a.stage, a.shape) for a in bsa] == [(2, (10, 14, 10)), (3, (5, 7, 5))]
    assert bsa[0].text == "regions of 2x7x5 tokens (20), top-4" and bsa[1].text.endswith("(1), dense")
    mdsa = layouts["nnUNetTrainerMDSA"]
    assert [a.stage for a in mdsa] == [2, 3] and "top-8" in mdsa[0].text
    assert [a.stage for a in layouts["nnUNetTrainerBilateral"]] == [2, 3]
    assert "Swin windows of" in layouts["nnUNetTrainerBilateral"][0].text
    # a variant plans file names our network: the stock trainer builds it, and its layout is the plans'
    from nnunet_sparseattn.plans.writer import variant_plans

    variant = variant_plans(plans, "bsa")
    cls, kwargs = networks.network_kwargs(find_trainer_class("nnUNetTrainer"), variant, "3d_fullres")
    assert networks.attention_layout(cls, kwargs, (40, 56, 40)) == bsa


def test_trainer_without_data_builds_what_initialize_builds(trainer_without_data):
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA

    plans = plans_for(HIPPOCAMPUS_3D, batch_size=2)
    meta = dataset_json()
    trainer = trainer_without_data(nnUNetTrainerBSA, plans, "3d_fullres", meta)
    assert trainer.was_initialized and trainer.batch_size == 2 and trainer.num_input_channels == 1
    assert type(trainer.network).__name__ == "BSAUNet" and isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.loss is not None and trainer.device.type == "cpu"
    bare = trainer_without_data(nnUNetTrainerBSA, plans, "3d_fullres", meta, initialize=False)
    assert not bare.was_initialized and bare.network is None
