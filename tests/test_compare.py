"""``nnunet-sparseattn compare`` and ``info -d -c``.

Fast: every refusal (one line, nothing written), the runs a request makes, the paired test against scipy and
hand-made cases, the reports, ``info`` on a planned dataset. Slow: compare end to end through nnU-Net's CLI on the
shared Hippocampus data at the smallest budget (two trainers and the stock baseline), killed after the first epoch
and run again: it resumes with nnU-Net's ``--c``, then a third run redoes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_COMMAND
from plans_cases import HIPPOCAMPUS_3D, dataset_json, plans_for

from nnunet_sparseattn.cli import main
from nnunet_sparseattn.compare.report import plot_comparison, render_markdown, results_table, size
from nnunet_sparseattn.compare.results import RESULTS_FILE, paired_test, smallest_p_value
from nnunet_sparseattn.compare.run import CompareRequest, Comparison, parse_folds, plan_runs
from nnunet_sparseattn.errors import UserError


# ------------------------------------------------------------------------------------------------ requests
def test_folds():
    assert parse_folds("0") == [0] and parse_folds("2,0") == [0, 2] and parse_folds([3, 1]) == [1, 3]
    assert parse_folds("all") == [0, 1, 2, 3, 4]
    for bad in ("5", "x", "", "0,,7", "-1"):
        with pytest.raises(UserError, match="give fold numbers 0-4"):
            parse_folds(bad)


def test_runs_put_baselines_first_and_run_stock_once():
    runs = plan_runs(["nnUNetTrainer", "nnUNetTrainerNB", "nnUNetTrainerBSA"], ["stock", "resenc-m"], "nnUNetPlans")
    assert [(r.key, r.label, r.baseline) for r in runs] == [
        ("nnUNetTrainer__nnUNetPlans", "stock nnU-Net", True),
        ("nnUNetTrainer__nnUNetResEncUNetMPlans", "ResEnc M", True),
        ("nnUNetTrainerNB__nnUNetPlans", "NB", False),
        ("nnUNetTrainerBSA__nnUNetPlans", "BSA", False),
    ]
    other = plan_runs(["nnUNetTrainerMDSA_AdamW"], [], "nnUNetPlans_MDSA")
    assert [(r.key, r.label, r.plans) for r in other] == [
        ("nnUNetTrainerMDSA_AdamW__nnUNetPlans_MDSA", "MDSA_AdamW (nnUNetPlans_MDSA)", "nnUNetPlans_MDSA")
    ]
    with pytest.raises(UserError, match="unknown baseline resenc-xl: choose from stock, resenc-m"):
        plan_runs([], ["resenc-xl"], "nnUNetPlans")
    with pytest.raises(UserError, match="no nnU-Net trainer named nnUNetTrainerNope"):
        plan_runs(["nnUNetTrainerNope"], ["stock"], "nnUNetPlans")
    with pytest.raises(UserError, match="is a budgeted trainer"):
        plan_runs(["nnUNetTrainerNB_benchtiny"], ["stock"], "nnUNetPlans")
    with pytest.raises(UserError, match="nothing to compare"):
        plan_runs([], [], "nnUNetPlans")


# --------------------------------------------------------------------------------------------- refusals
@pytest.fixture
def planned(tmp_path, monkeypatch):
    """nnU-Net's raw and preprocessed folders with Dataset999_Contracts: planned (3d_fullres only), no data."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    dataset = raw / "Dataset999_Contracts"
    (dataset / "imagesTr").mkdir(parents=True), (dataset / "labelsTr").mkdir()
    meta = json.dumps(dataset_json(num_training=0))
    (dataset / "dataset.json").write_text(meta)
    (pre / dataset.name).mkdir(parents=True)
    arch, _ = HIPPOCAMPUS_3D
    plans = plans_for((dict(arch, features_per_stage=[4, 8, 16, 32]), (16, 24, 16)))
    (pre / dataset.name / "nnUNetPlans.json").write_text(json.dumps(plans))
    (pre / dataset.name / "dataset.json").write_text(meta)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    return tmp_path


def _refused(capsys, *args: str) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnunet-sparseattn: error: ") and err.count("\n") == 1, err
    return err


BASE = ["compare", "-d", "999", "-c", "3d_fullres", "--budget", "tiny", "--device", "cpu"]


@pytest.mark.parametrize(
    "change, message",
    [
        (["-d", "42"], r"no Dataset042_\* in nnUNet_raw .*: it holds Dataset999_Contracts"),
        (
            ["-c", "2d"],
            "the plans nnUNetPlans of Dataset999_Contracts have no configuration 2d: choose one of 3d_fullres",
        ),
        (["--trainers", "nnUNetTrainerNB,nnUNetTrainerNope"], "no nnU-Net trainer named nnUNetTrainerNope"),
        (["--budget", "lots"], "budget 'lots' is neither a named budget"),
        (["--budget", "10x"], "budget '10x' is neither a named budget"),
        (["--baselines", "resenc-xl"], "unknown baseline resenc-xl"),
        (["--folds", "7"], "give fold numbers 0-4"),
        (["--device", "tpu"], "--device 'tpu' is no device here: choose cpu, cuda or mps"),
        (["--trainers", ""], "--trainers '' names no trainer"),
        (["--trainers", " , "], "--trainers ' , ' names no trainer"),
        (["--plans", "nnUNetPlans_BSA"], "there are no plans nnUNetPlans_BSA for Dataset999_Contracts"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(planned, capsys, change, message):
    out = planned / "out"
    args = dict(zip(BASE[1::2], BASE[2::2]))
    args.update(dict(zip(change[::2], change[1::2])))
    err = _refused(capsys, "compare", *[x for kv in args.items() for x in kv], "-o", str(out))
    assert __import__("re").search(message, err), err
    assert not out.exists()


def test_an_output_that_is_a_file_or_inside_the_raw_dataset_is_refused_before_any_work(planned, capsys):
    a_file = planned / "a_file"
    a_file.write_text("")
    assert f"-o {a_file} is a file" in _refused(capsys, *BASE, "-o", str(a_file))
    raw = planned / "raw" / "Dataset999_Contracts"
    assert "lies inside the raw dataset folder" in _refused(capsys, *BASE, "-o", str(raw / "out"))
    assert not (raw / "out").exists()


def test_refuses_nnunet_folders_that_are_not_set(planned, monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw")
    err = _refused(capsys, *BASE, "-o", str(planned / "out"))
    assert "nnUNet_raw is not set: export nnUNet_raw=" in err


def _stamp(folder: Path, **changes) -> None:
    """Stamp ``folder`` as a comparison: this request's header with ``changes`` applied, no runs."""
    (folder / RESULTS_FILE).unlink(missing_ok=True)
    request = CompareRequest(999, "3d_fullres", folder, trainers=["nnUNetTrainerNB"], budget="tiny", device="cpu")
    comparison = Comparison(request, echo=lambda line: None)
    header = dict(comparison.header)
    header.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULTS_FILE).write_text(json.dumps(dict(header, runs={}, tests=[])))


def test_refuses_the_folder_of_another_comparison(planned, capsys):
    out = planned / "out"
    _stamp(out, budget={"name": "cpu"})
    err = _refused(capsys, *BASE, "-o", str(out))
    assert f"{out} holds a comparison with another budget cpu (this one: budget tiny)" in err
    _stamp(out, dataset={"id": 4, "name": "Dataset004_Hippocampus"})
    err = _refused(capsys, *BASE, "-o", str(out))
    assert "another dataset Dataset004_Hippocampus (this one: dataset Dataset999_Contracts)" in err
    _stamp(out, machine="another machine")
    assert "another machine another machine" in _refused(capsys, *BASE, "-o", str(out))
    _stamp(out)  # the same comparison: accepted (resumed)
    assert Comparison(
        CompareRequest(999, "3d_fullres", out, trainers=["nnUNetTrainerNB"], budget="tiny", device="cpu"),
        echo=lambda line: None,
    ).resumed
    stray = planned / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert "is not empty and holds no compare.json" in _refused(capsys, *BASE, "-o", str(stray))


@pytest.mark.parametrize("written", [2, 3])
def test_a_preprocessing_stopped_part_way_is_redone_before_any_training(planned, monkeypatch, capsys, written):
    """nnU-Net writes each case's .pkl last: a case without one was not finished (a compare or machine stopped during
    preprocessing), and nnUNetv2_train would fail only when it draws that case. Complete data is left alone."""
    from nnunet_sparseattn.compare import run as compare_run

    labels = planned / "raw" / "Dataset999_Contracts" / "labelsTr"
    data = planned / "pre" / "Dataset999_Contracts" / "nnUNetPlans_3d_fullres"
    data.mkdir()
    for i in range(3):
        (labels / f"case_{i:03d}.nii.gz").write_bytes(b"")
        (data / f"case_{i:03d}.b2nd").write_bytes(b"")
    for i in range(written):
        (data / f"case_{i:03d}.pkl").write_bytes(b"")
    calls = []
    monkeypatch.setattr(compare_run.commands, "preprocess", lambda *args, **kwargs: calls.append(args[:3]))
    request = CompareRequest(
        999, "3d_fullres", planned / "out", trainers=["nnUNetTrainerNB"], budget="tiny", device="cpu"
    )
    Comparison(request, echo=print).prepare()
    out = capsys.readouterr().out
    if written == 3:
        assert calls == [] and "preprocessing" not in out
    else:
        assert calls == [(999, "nnUNetPlans", "3d_fullres")]
        assert "preprocessing 3d_fullres for nnUNetPlans, 1 of 3 cases missing" in out


def test_a_resumed_comparison_counts_the_flops_of_its_kept_runs_again(planned):
    """Finished runs are kept (nothing trained or predicted again) but their FLOPs are counted with today's counter
    (an earlier one counted every CPU attention as 0): a rerun of the same command refreshes a report's cost. A run
    whose network has other parameters than when it trained keeps what was measured then."""
    from nnunet_sparseattn.harness.networks import network_cost
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA

    out = planned / "out"
    lines: list[str] = []
    request = CompareRequest(999, "3d_fullres", out, trainers=["nnUNetTrainerBSA"], budget="tiny", device="cpu")
    comparison = Comparison(request, echo=lines.append)
    pre = planned / "pre" / "Dataset999_Contracts"
    (pre / "nnUNetPlans_3d_fullres").mkdir()  # preprocessed: compare plans and preprocesses nothing
    (pre / "nnUNetPlans_3d_fullres" / "case.npz").write_bytes(b"")
    cost = network_cost(
        nnUNetTrainerBSA,
        json.loads((pre / "nnUNetPlans.json").read_text()),
        "3d_fullres",
        json.loads((pre / "dataset.json").read_text()),
    )
    per_case = {"p": {"mean_dice": 0.5}, "q": {"mean_dice": 0.6}}
    done = {"status": "done", "mean_dice": 0.55, "s_per_iter": 1.0, "per_case": per_case}
    stale = {
        "nnUNetTrainer__nnUNetPlans": dict(done, label="stock nnU-Net", baseline=True, params=1, flops=7),
        "nnUNetTrainerBSA__nnUNetPlans": dict(done, label="BSA", params=cost["params"], flops=1),
    }
    out.mkdir()
    (out / RESULTS_FILE).write_text(json.dumps(dict(comparison.header, runs=stale, tests=[])))
    results = Comparison(request, echo=lines.append).run()
    bsa = results["runs"]["nnUNetTrainerBSA__nnUNetPlans"]
    assert bsa == dict(stale["nnUNetTrainerBSA__nnUNetPlans"], **cost)  # only the cost changed
    assert results["runs"]["nnUNetTrainer__nnUNetPlans"] == stale["nnUNetTrainer__nnUNetPlans"]
    assert f"BSA: done before, kept; FLOPs counted again: 1 -> {cost['flops']}" in lines
    assert any(line.startswith("stock nnU-Net: done before, kept; its network now has ") for line in lines)
    assert (
        json.loads((out / RESULTS_FILE).read_text())["runs"]["nnUNetTrainerBSA__nnUNetPlans"]["flops"] == cost["flops"]
    )
    assert f"| {size(cost['flops'])} | done |" in (out / "compare.md").read_text()


# --------------------------------------------------------------------------------------------- the test
def test_paired_test_against_scipy_and_by_hand():
    from scipy.stats import wilcoxon

    trainer = {"a": 0.9, "b": 0.8, "c": 0.7, "d": None, "f": 0.6}
    baseline = {"a": 0.8, "b": 0.8, "c": 0.5, "e": 0.1, "f": 0.65}
    test = paired_test(trainer, baseline)  # common scored cases: a, b, c, f
    assert test["cases"] == 4 and (test["wins"], test["losses"], test["ties"]) == (2, 1, 1)
    assert test["mean_difference"] == pytest.approx((0.1 + 0.0 + 0.2 - 0.05) / 4)
    assert test["p_value"] == pytest.approx(wilcoxon([0.1, 0.0, 0.2, -0.05]).pvalue)
    same = paired_test({"a": 0.5, "b": 0.7}, {"a": 0.5, "b": 0.7})
    assert same["p_value"] == 1.0 and same["mean_difference"] == 0.0
    assert paired_test({"a": 0.5}, {"b": 0.5}) | {"test": ""} == {
        "cases": 0,
        "mean_difference": None,
        "wins": 0,
        "losses": 0,
        "ties": 0,
        "p_value": None,
        "test": "",
    }
    six = paired_test({str(i): 0.9 for i in range(6)}, {str(i): 0.8 - i / 100 for i in range(6)})
    assert six["p_value"] == pytest.approx(smallest_p_value(6)) == pytest.approx(2 / 64)


# ------------------------------------------------------------------------------------------------ reports
def _results() -> dict:
    def run(label, trainer, dice, s, baseline=False):
        per_case = {c: {"dice": {"a": d}, "mean_dice": d, "hd95": {"a": 1.0}} for c, d in zip("pqrstu", dice)}
        return {
            "label": label,
            "trainer": trainer,
            "plans": "nnUNetPlans",
            "baseline": baseline,
            "status": "done",
            "dice": {"a": sum(dice) / 6},
            "mean_dice": sum(dice) / 6,
            "hd95": {"a": 1.0},
            "s_per_iter": s,
            "s_per_case": 0.4,
            "peak_memory_bytes": 2 * 2**30,
            "params": 5.6e6,
            "flops": 3.8e10,
            "per_case": per_case,
        }

    runs = {
        "nnUNetTrainer__nnUNetPlans": run("stock nnU-Net", "nnUNetTrainer", [0.7] * 6, 1.0, True),
        "nnUNetTrainerBSA__nnUNetPlans": run("BSA", "nnUNetTrainerBSA", [0.8] * 6, 1.2),
        "nnUNetTrainerMDSA__nnUNetPlans": {
            "label": "MDSA",
            "plans": "nnUNetPlans",
            "status": "failed",
            "reason": "nnUNetv2_train failed with exit code 1: see x.log",
        },
    }
    tests = [
        {
            "run": "nnUNetTrainerBSA__nnUNetPlans",
            "baseline": "nnUNetTrainer__nnUNetPlans",
            **paired_test(
                {c: v["mean_dice"] for c, v in runs["nnUNetTrainerBSA__nnUNetPlans"]["per_case"].items()},
                {c: 0.7 for c in "pqrstu"},
            ),
        }
    ]
    return {
        "dataset": {"id": 4, "name": "Dataset004_Hippocampus"},
        "configuration": "3d_fullres",
        "budget": {"name": "cpu", "num_epochs": 8, "num_iterations_per_epoch": 16},
        "budget_text": "8 x 16",
        "device": "cpu",
        "machine": "test CPU",
        "command": "nnunet-sparseattn compare -d 4",
        "torch": "t",
        "nnunetv2": "n",
        "heldout": {"kind": "validation", "cases": {"fold_0": list("pqrstu")}},
        "started": "2026-01-01T00:00:00",
        "updated": "2026-01-01T01:00:00",
        "runs": runs,
        "tests": tests,
    }


def test_markdown_states_the_test_and_the_cost_beside_each_trainer(tmp_path):
    text = render_markdown(_results())
    assert text.startswith("# Dataset004_Hippocampus `3d_fullres`: compare")
    assert "Held-out cases: 6, each fold's validation cases, predicted by that fold's model." in text
    assert (
        "| BSA | `nnUNetPlans` | 0.800 | a 0.800 | +10.0 (p 0.031, 6/6 better) | a 1.00 | 1.200 | 0.40 "
        "| 2.00 GiB | 5.60 M | 38.00 G | done |"
    ) in text
    assert "| stock nnU-Net | `nnUNetPlans` | 0.700 | a 0.700 | – |" in text
    assert "| MDSA | `nnUNetPlans` | – | – | – |" in text and "failed: nnUNetv2_train failed" in text
    assert "two-sided Wilcoxon signed-rank test" in text
    few = _results()
    few["tests"][0]["cases"] = 3
    assert "With 3 cases no difference can reach p < 0.05 (the smallest possible p is 0.250)" in render_markdown(few)
    assert results_table(_results(), dataset="Hippocampus").splitlines()[2].startswith("| Hippocampus | stock")
    path = plot_comparison(_results(), tmp_path / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = dict(_results(), runs={})
    assert plot_comparison(empty, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_runs_get_evaluates_metrics_and_the_report_shows_them(tmp_path):
    """Besides its own Dice and HD95, compare scores each run's predictions with ``evaluate`` (IoU, NSD and, in 2D,
    the polyp papers' mDSC ... MAE); checked by hand on squares shifted by 0, 2 and 4 pixels."""
    from PIL import Image

    from nnunet_sparseattn.compare.run import EVALUATED, evaluate_predictions

    labels, predictions = tmp_path / "labels", tmp_path / "pred"
    labels.mkdir(), predictions.mkdir()
    meta = dataset_json(["lesion"], channels="RGB", file_ending=".png", num_training=3)
    (predictions / "dataset.json").write_text(json.dumps(meta))  # nnUNetv2_predict writes one
    for i, shift in enumerate((0, 2, 4)):
        ref = np.zeros((32, 32), np.uint8)
        ref[8:20, 8:20] = 1
        Image.fromarray(ref).save(labels / f"c{i}.png")
        Image.fromarray(np.roll(ref, shift, axis=1)).save(predictions / f"c{i}.png")
    record = evaluate_predictions(labels, predictions)
    assert set(record) == set(EVALUATED) and record["dimensionality"] == "2d" and record["num_cases"] == 3
    iou = (1 + 120 / 168 + 96 / 192) / 3  # 12x12 squares overlapping by 12, 10 and 8 columns
    assert record["mean"]["classes"]["lesion"]["IoU"] == pytest.approx(iou)
    assert record["mean"]["iou"] == pytest.approx(iou) and record["mean"]["dice"] == pytest.approx(
        (1 + 240 / 288 + 192 / 288) / 3
    )
    assert record["sources"]["S_α, F^w_β, E^max_φ, MAE"] == "masks"
    results = _results()
    results["runs"]["nnUNetTrainerBSA__nnUNetPlans"]["evaluate"] = record
    text = render_markdown(results)
    assert "`nnunet-sparseattn evaluate`'s metrics of the same predictions" in text
    assert f"| BSA | {record['mean']['dice']:.3f} | {iou:.3f} |" in text
    regions = {"background": 0, "whole": [1, 2], "core": [2]}  # nnU-Net's region-based training
    (predictions / "dataset.json").write_text(json.dumps(dict(meta, labels=regions, regions_class_order=[1, 2])))
    assert evaluate_predictions(labels, predictions) is None  # regions: compare's own scores only


# ---------------------------------------------------------------------------------------------------- info
def test_info_lists_every_network_of_a_dataset_with_its_attention_layout(planned, capsys):
    assert main(["info", "-d", "999", "-c", "3d_fullres"]) == 0
    out = capsys.readouterr().out
    assert "networks for 3d_fullres (nnUNetPlans), one patch 16x24x16 with 1 input channel(s)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("nnUNetTrainer")}
    assert list(rows) == ["nnUNetTrainer", "nnUNetTrainerBSA", "nnUNetTrainerMDSA", "nnUNetTrainerBilateral"]
    assert "PlainConvUNet" in rows["nnUNetTrainer"] and rows["nnUNetTrainer"].endswith("none (convolutions only)")
    assert "BSAUNet" in rows["nnUNetTrainerBSA"] and "stage 2 (4x6x4)" in rows["nnUNetTrainerBSA"]
    assert "grid" in rows["nnUNetTrainerMDSA"] and "Swin windows" in rows["nnUNetTrainerBilateral"]
    assert "(nnUNetTrainerNB: stock nnU-Net's network, another loss)" in out
    assert "no configuration 2d: choose one of 3d_fullres" in _refused(capsys, "info", "-d", "999", "-c", "2d")
    assert "info -d 999 needs -c CONFIGURATION too" in _refused(capsys, "info", "-d", "999")
    assert "info needs --variant NAME" in _refused(capsys, "info")
    assert "no Dataset005_*" in _refused(capsys, "info", "-d", "5", "-c", "3d_fullres")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_compare_end_to_end_resumes_after_a_kill(hippocampus_nnunet, tmp_path):
    """A trainer and the stock baseline at the tiny budget on the shared Hippocampus data (15 training cases, fold 0:
    3 validation cases), through the real CLI; killed (process group, SIGKILL) after the first run's first epoch,
    then the same command resumes and finishes, and a third run redoes nothing. (The budgeted attention trainers run
    through nnU-Net's CLI in tests/test_gpu_script.py; one trainer here keeps the suite short.)"""
    from nnunet_sparseattn.harness.budgets import TIMING_FILE, training_state

    run = hippocampus_nnunet
    out = tmp_path / "compare"
    args = [
        *CLI_COMMAND,
        "compare",
        "-d",
        str(run["id"]),
        "-c",
        "3d_fullres",
        "-o",
        str(out),
        "--trainers",
        "nnUNetTrainerNB",
        "--budget",
        "tiny",
        "--device",
        "cpu",
    ]
    results_root = out / "nnUNet_results" / "Dataset004_Hippocampus"
    stock_fold = results_root / "nnUNetTrainer_benchtiny__nnUNetPlans__3d_fullres" / "fold_0"

    # the progress line of epoch 1 comes after nnU-Net saved that epoch's checkpoint: kill right there
    killed = subprocess.Popen(
        args, env=run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    seen = []
    for line in killed.stdout:
        seen.append(line)
        if "epoch 1/2" in line:
            os.killpg(killed.pid, signal.SIGKILL)
            break
    killed.wait()
    assert any(line.startswith("  stock nnU-Net  fold 0  epoch 1/2  loss ") and " ETA " in line for line in seen), seen
    assert training_state(stock_fold) == "resume"

    resumed = subprocess.run(args, env=run["env"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "stock nnU-Net: continuing fold 0" in resumed.stdout and "NB: training fold 0" in resumed.stdout
    assert "Current learning rate" not in resumed.stdout  # nnU-Net's own log went to the log files
    assert "Current learning rate" in (out / "logs" / "nnUNetTrainer__nnUNetPlans.log").read_text()

    results = json.loads((out / RESULTS_FILE).read_text())
    assert list(results["runs"]) == ["nnUNetTrainer__nnUNetPlans", "nnUNetTrainerNB__nnUNetPlans"]
    assert results["heldout"]["kind"] == "validation" and len(results["heldout"]["cases"]["fold_0"]) == 3
    for key, r in results["runs"].items():
        assert r["status"] == "done", r
        assert set(r["dice"]) == {"Anterior", "Posterior"} and all(0 <= v <= 1 for v in r["dice"].values())
        assert sorted(r["per_case"]) == results["heldout"]["cases"]["fold_0"]
        assert r["s_per_iter"] > 0 and r["s_per_case"] > 0 and r["predicted_cases"] == 3
        assert r["peak_memory_bytes"] > 100 * 2**20 and r["params"] > 1e6 and r["flops"] > 1e9
        fold = r["folds"]["0"]
        assert len(fold["curve"]["train_loss"]) == 2 and fold["grad_norm_max"] > 0
        assert fold["sessions"] == ([0, 1] if key.startswith("nnUNetTrainer__") else [0])
        assert not (results_root / f"{r['trainer_class']}__nnUNetPlans__3d_fullres" / "fold_0" / "validation").exists()
    stock = json.loads((stock_fold / TIMING_FILE).read_text())
    assert [s["start_epoch"] for s in stock["sessions"]] == [0, 1]  # continued at epoch 1, not from scratch
    assert [t["run"] for t in results["tests"]] == ["nnUNetTrainerNB__nnUNetPlans"]
    assert all(t["baseline"] == "nnUNetTrainer__nnUNetPlans" and t["cases"] == 3 for t in results["tests"])
    # stock nnU-Net and NB build the same network from the same seed: the same batches in epoch 0; stock's epoch 1
    # ran in a resumed session, which reseeds (nnU-Net's checkpoints hold no random state): other batches
    nb = json.loads(
        (results_root / "nnUNetTrainerNB_benchtiny__nnUNetPlans__3d_fullres" / "fold_0" / TIMING_FILE).read_text()
    )
    checksums = [[it["batch_checksum"] for it in t["iterations"]] for t in (stock, nb)]
    assert checksums[0][0] == checksums[1][0] and checksums[0][1] != checksums[1][1]
    table = (out / "compare.md").read_text()
    assert "| NB | `nnUNetPlans` |" in table and "| stock nnU-Net | `nnUNetPlans` |" in table
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # the user's own nnUNet_results is untouched
    assert not list(Path(run["env"]["nnUNet_results"]).glob("*/*_bench*"))

    logs = sorted(results_root.glob("*/fold_0/training_log_*.txt"))
    again = subprocess.run(args, env=run["env"], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("done before, kept") == 2
    assert sorted(results_root.glob("*/fold_0/training_log_*.txt")) == logs
    assert json.loads((out / RESULTS_FILE).read_text())["runs"] == results["runs"]


@pytest.mark.slow
def test_the_resenc_baseline_is_planned_by_nnunets_own_planner_on_the_shared_data(hippocampus_nnunet, tmp_path, capsys):
    """``--baselines resenc-m``: nnUNetPlannerResEncM writes its plans beside the default ones and reuses their
    preprocessed data (no preprocessing again); ``info`` then lists its network beside the others."""
    run = hippocampus_nnunet
    env = run["env"]
    request = CompareRequest(
        run["id"],
        "3d_fullres",
        tmp_path / "out",
        trainers=[],
        baselines=["stock", "resenc-m"],
        budget="tiny",
        device="cpu",
        raw=Path(env["nnUNet_raw"]),
        preprocessed=Path(env["nnUNet_preprocessed"]),
    )
    comparison = Comparison(request, echo=print)
    assert [r.key for r in comparison.runs] == ["nnUNetTrainer__nnUNetPlans", "nnUNetTrainer__nnUNetResEncUNetMPlans"]
    comparison.prepare()
    out = capsys.readouterr().out
    assert "planning the ResEnc M baseline with nnUNetPlannerResEncM" in out and "preprocessing" not in out
    folder = Path(env["nnUNet_preprocessed"]) / "Dataset004_Hippocampus"
    resenc = json.loads((folder / "nnUNetResEncUNetMPlans.json").read_text())["configurations"]["3d_fullres"]
    assert resenc["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert resenc["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("nnUNet_preprocessed", env["nnUNet_preprocessed"])
        assert main(["info", "-d", "4", "-c", "3d_fullres"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("nnUNetTrainer ")]
    assert [row.split()[1] for row in rows] == ["nnUNetPlans", "nnUNetResEncUNetMPlans"]
    assert "ResidualEncoderUNet" in rows[1]


@pytest.mark.slow
def test_a_dataset_with_test_labels_is_scored_on_imagests_by_the_folds_ensemble(isic_nnunet, tmp_path):
    """Where ``labelsTs`` exists, compare predicts ``imagesTs`` (with the trained folds, here fold 0) instead of the
    validation cases, and scores it with its own Dice/HD95 and evaluate's 2D metrics. One run (the stock baseline)
    at the tiny budget on the shared ISIC 2017 data (2 test cases)."""
    run = isic_nnunet
    env = run["env"]
    request = CompareRequest(
        run["id"],
        "2d",
        tmp_path / "out",
        trainers=[],
        budget="tiny",
        device="cpu",
        raw=Path(env["nnUNet_raw"]),
        preprocessed=Path(env["nnUNet_preprocessed"]),
    )
    results = Comparison(request, echo=print).run()
    tests = sorted(p.name.removesuffix(".png") for p in run["labels"].glob("*.png"))
    assert results["heldout"] == {"kind": "test", "cases": {"test": tests}}
    stock = results["runs"]["nnUNetTrainer__nnUNetPlans"]
    assert stock["status"] == "done" and stock["predicted_cases"] == len(tests) == 2
    assert sorted(stock["per_case"]) == tests and 0.0 <= stock["mean_dice"] <= 1.0
    evaluated = stock["evaluate"]
    assert evaluated["dimensionality"] == "2d" and evaluated["num_cases"] == 2
    assert evaluated["mean"]["classes"]["foreground"]["Dice"] == pytest.approx(stock["dice"]["foreground"])
    assert all(0.0 <= evaluated["mean"][k] <= 1.0 for k in ("dice", "iou", "s_alpha", "weighted_f", "max_e", "mae"))
    assert "imagesTs (labelsTs), predicted by the ensemble" in (tmp_path / "out" / "compare.md").read_text()
