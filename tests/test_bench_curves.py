"""The learning-curve benchmark (benchmarks/curves.py) and its splits (benchmarks/splits.py).

The comparisons themselves run through ``compare`` (tested end to end in ``tests/test_compare.py``); here: the
splits against the data and the README's sequence table, the protocol's pieces, and the script from a piece's
``compare.json`` to the merged results, the plots and the BENCHMARKS section, with ``run_piece`` writing what
``compare`` writes (no training: seconds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import curves, splits
from nnunet_sparseattn.compare.results import paired_test
from nnunet_sparseattn.compare.run import short_label
from nnunet_sparseattn.harness.budgets import TIMING_FILE, parse_budget


# ------------------------------------------------------------------------------------------------- splits
def test_cvc_sequences_follow_the_readme_table():
    assert [len(r) for r in splits.CVC_SEQUENCES.values()][:4] == [25, 25, 17, 11]  # 1-25, 26-50, 51-67, 68-78
    assert sum(len(r) for r in splits.CVC_SEQUENCES.values()) == 612 and len(splits.CVC_SEQUENCES) == 29
    assert (
        splits.cvc_sequence(1),
        splits.cvc_sequence(25),
        splits.cvc_sequence(26),
        splits.cvc_sequence(200),
        splits.cvc_sequence(205),
        splits.cvc_sequence(206),
        splits.cvc_sequence(612),
    ) == (1, 1, 2, 10, 10, 11, 29)
    with pytest.raises(ValueError, match="no frame 613"):
        splits.cvc_sequence(613)


def test_committed_splits_are_what_the_command_makes_from_the_data(shared_data):
    made = splits.make_lists(shared_data)
    for key, names in made.items():
        assert splits.read_list(key) == names, f"{key}: run python -m benchmarks.splits and commit the lists"
        assert len(names) >= splits.MIN_TEST[key] and len(set(names)) == len(names)
    test_sequences = {splits.cvc_sequence(int(Path(n).stem)) for n in made["cvc"]}
    all_frames = [p.name for p in (shared_data / "CVC-ClinicDB" / "images").iterdir()]
    train_sequences = {splits.cvc_sequence(int(Path(n).stem)) for n in all_frames if n not in made["cvc"]}
    assert not test_sequences & train_sequences  # whole sequences on one side
    assert len(all_frames) == 609 and 120 <= len(made["cvc"]) < 150
    assert all(n.startswith("hippocampus_") for n in made["hippocampus"])


def test_hold_out_cases_moves_the_cases_and_drops_unlabelled_test_images(tmp_path):
    dataset = tmp_path / "Dataset004_Hippocampus"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (dataset / folder).mkdir(parents=True)
    for case in ("h_1", "h_2", "h_3"):
        (dataset / "imagesTr" / f"{case}_0000.nii.gz").write_text(case)
        (dataset / "labelsTr" / f"{case}.nii.gz").write_text(case)
    (dataset / "imagesTs" / "h_9_0000.nii.gz").write_text("MSD's unlabelled test image")
    (dataset / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "numTraining": 3}))
    splits.hold_out_cases(dataset, ["h_2"])
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == ["h_2_0000.nii.gz"]
    assert sorted(p.name for p in (dataset / "labelsTs").iterdir()) == ["h_2.nii.gz"]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == ["h_1.nii.gz", "h_3.nii.gz"]
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 2
    (dataset / "imagesTr" / "h_3_0000.nii.gz").rename(dataset / "imagesTs" / "h_3_0000.nii.gz")  # killed mid-move
    splits.hold_out_cases(dataset, ["h_2", "h_3"])  # again, one more: what is moved stays, the rest follows
    assert sorted(p.name for p in (dataset / "labelsTs").iterdir()) == ["h_2.nii.gz", "h_3.nii.gz"]
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == ["h_2_0000.nii.gz", "h_3_0000.nii.gz"]
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    with pytest.raises(curves_user_error(), match="1 test case"):
        splits.hold_out_cases(dataset, ["h_7"])


def curves_user_error() -> type:
    from nnunet_sparseattn.errors import UserError

    return UserError


# ------------------------------------------------------------------------------------------------- protocol
def test_the_protocol_has_the_issues_budgets_seeds_and_one_batch_size():
    pieces = curves.plan_pieces(list(curves.DATASETS), list(curves.TRAINERS))
    budgets = {p.budget: parse_budget(p.budget) for p in pieces}
    short, long = parse_budget(curves.SHORT), parse_budget(curves.LONG)
    assert long.iterations >= 1500 and long.iterations >= 5 * short.iterations
    assert {b.max_batch_size for b in budgets.values()} == {curves.BATCH}
    assert {b.seed for b in budgets.values() if b.iterations == short.iterations} == set(curves.SEEDS)
    assert len(curves.SEEDS) >= 3
    for dataset in curves.DATASETS:  # every trainer at both budgets; stock first at the long one (the tests need it)
        mine = [p for p in pieces if p.dataset == dataset]
        assert {t for p in mine if p.budget == curves.LONG for t in p.trainers} >= set(curves.TRAINERS)
        assert next(p for p in mine if p.budget == curves.LONG).trainers == (curves.STOCK,)
        for seed in curves.SEEDS:
            assert any(
                p.budget == curves.budget_name(curves.SHORT, seed) and set(p.trainers) == set(curves.TRAINERS)
                for p in mine
            )
    assert curves.budget_name("6x50b2", 0) == "6x50b2" and curves.budget_name("6x50b2", 2) == "6x50b2s2"
    # recipes: every trainer's other one, stock's and NB's (the controls) too, explored at the short budget's first
    # seed (after the defaults there, in their folder: one stock run for both) and confirmed at the long one
    assert set(curves.RECIPES) == set(curves.TRAINERS) and {"nnUNetTrainer_AdamW", "nnUNetTrainerNB_AdamW"} <= set(
        curves.RECIPE_TRAINERS
    )
    for dataset in curves.DATASETS:
        mine = [p for p in pieces if p.dataset == dataset]
        explore = [p for p in mine if p.label == "recipes"]
        assert len(explore) == 1 and explore[0].budget == curves.SHORT
        assert set(explore[0].trainers) == set(curves.RECIPE_TRAINERS)
        assert mine.index(explore[0]) > mine.index(next(p for p in mine if p.budget == curves.SHORT))
        assert {t for p in mine if p.budget == curves.LONG for t in p.trainers} == set(curves.ALL_TRAINERS)
    names = [p.name for p in pieces]
    assert len(set(names)) == len(names) and "cvc/30x50b2/stock_AdamW" in names
    assert curves.default_of("nnUNetTrainerBilateral_SGD") == "nnUNetTrainerBilateral"


def test_dry_run_lists_every_piece_with_its_state_and_hours(tmp_path, capsys):
    assert curves.main(["--dry-run", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    pieces = curves.plan_pieces(list(curves.DATASETS), list(curves.TRAINERS))
    assert len(out) == len(pieces) + 1 and out[0].startswith("cvc/6x50b2/all") and " todo " in out[0]
    hours = [float(line.rsplit("~", 1)[1].split()[0]) for line in out[:-1]]
    assert max(hours) <= 1.5  # pieces of at most 90 minutes, as estimated
    assert out[-1].startswith(f"{len(pieces)} pieces, ~")


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to do"),
        (["--dataset", "kvasir", "--budget", "2x2b2"], "unknown dataset kvasir"),
        (["--dataset", "cvc", "--budget", "2x2b2", "--trainer", "nnUNetTrainerX"], "unknown trainer nnUNetTrainerX"),
        (["--dataset", "cvc", "--budget", "lots"], "budget 'lots' is neither"),
    ],
)
def test_refusals_are_one_line(tmp_path, capsys, args, message):
    assert curves.main([*args, "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------------- results
def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(1)
    few, many = list(rng.uniform(0.5, 0.9, 20)), list(rng.uniform(0.5, 0.9, 400))
    for values in (few, many):
        low, high = curves.bootstrap_interval(values)
        assert low < np.mean(values) < high
    assert np.diff(curves.bootstrap_interval(many)) < np.diff(curves.bootstrap_interval(few))
    assert curves.bootstrap_interval([0.7, 0.7, 0.7]) == [0.7, 0.7] and curves.bootstrap_interval([0.5]) is None


DICE = {
    "nnUNetTrainer": 0.70,
    "nnUNetTrainerNB": 0.72,
    "nnUNetTrainerBSA": 0.74,
    "nnUNetTrainerMDSA": 0.69,
    "nnUNetTrainerBilateral": 0.66,
    "nnUNetTrainer_AdamW": 0.71,
    "nnUNetTrainerNB_AdamW": 0.72,
    "nnUNetTrainerBSA_AdamW": 0.78,
    "nnUNetTrainerMDSA_AdamW": 0.69,
    "nnUNetTrainerBilateral_SGD": 0.63,
}


def _fake_compare(piece: curves.Piece, work: Path, data_root: Path, command: str, tiny: bool = False) -> dict:
    """What compare leaves in a piece's folder: compare.json and, per run, the fold's benchmark_timing.json."""
    budget = parse_budget(piece.budget)
    folder = piece.folder(work)
    rng = np.random.default_rng(budget.seed + budget.iterations)
    cases = [f"c{i:02d}" for i in range(12)]
    path = folder / "compare.json"
    results: dict[str, Any] = (
        json.loads(path.read_text())
        if path.is_file()
        else {
            "dataset": {"id": 961, "name": "Dataset961_CVCClinicDB"},
            "configuration": "2d",
            "plans": "nnUNetPlans",
            "budget": budget.to_json(),
            "budget_text": budget.describe(),
            "machine": "2 CPU cores",
            "torch": "t",
            "nnunetv2": "n",
            "started": "2026-12-07T18:00:00+00:00",
            "updated": "2026-12-07T19:00:00+00:00",
            "heldout": {"kind": "test", "cases": {"test": cases}},
            "runs": {},
            "tests": [],
        }
    )
    for trainer in dict.fromkeys(("nnUNetTrainer", *piece.trainers)):
        base = DICE[trainer] + budget.iterations / 10000 + budget.seed / 1000
        per_case = {c: {"mean_dice": float(base + rng.normal(0, 0.02))} for c in cases}
        klass = f"{trainer}_bench{budget.name}"
        fold = folder / "nnUNet_results" / "Dataset961_CVCClinicDB" / f"{klass}__nnUNetPlans__2d" / "fold_0"
        fold.mkdir(parents=True, exist_ok=True)
        epochs = {
            str(e): {
                "train_s": 10.0,
                "train_cpu_s": 18.0,
                "iterations": budget.num_iterations_per_epoch,
                "first_in_session": e == 0,
            }
            for e in range(budget.num_epochs)
        }
        (fold / TIMING_FILE).write_text(json.dumps({"epochs": epochs, "sessions": [], "iterations": []}))
        evaluate = {
            "dimensionality": "2d",
            "distance_unit": "px",
            "nsd_tolerance": 2.0,
            "num_cases": 12,
            "sources": {"S_α, F^w_β, E^max_φ, MAE": "masks"},
            "mean": {
                "dice": base,
                "iou": base - 0.1,
                "s_alpha": 0.8,
                "weighted_f": 0.7,
                "max_e": 0.9,
                "mae": 0.05,
                "classes": {"polyp": {"Dice": base, "IoU": base - 0.1, "HD95": 9.0, "NSD": 0.6}},
            },
        }
        results["runs"][f"{trainer}__nnUNetPlans"] = {
            "label": short_label(trainer),
            "trainer": trainer,
            "trainer_class": klass,
            "baseline": trainer == "nnUNetTrainer",
            "status": "done",
            "mean_dice": float(np.mean([v["mean_dice"] for v in per_case.values()])),
            "dice": {"polyp": base},
            "hd95": {"polyp": 9.0},
            "s_per_iter": 0.5,
            "s_per_case": 0.1,
            "folds": {
                "0": {
                    "train_wall_s": 20.0 * budget.num_epochs,
                    "load_average_before": [2.0],
                    "load_average_after": [2.1],
                }
            },
            "per_case": per_case,
            "evaluate": evaluate,
        }
    stock = {c: v["mean_dice"] for c, v in results["runs"]["nnUNetTrainer__nnUNetPlans"]["per_case"].items()}
    results["tests"] = [
        {
            "run": k,
            "baseline": "nnUNetTrainer__nnUNetPlans",
            **paired_test({c: v["mean_dice"] for c, v in r["per_case"].items()}, stock),
        }
        for k, r in results["runs"].items()
        if not r["baseline"]
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return results


def test_pieces_merge_into_one_json_plot_and_section_and_finished_ones_are_skipped(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        curves, "run_piece", lambda piece, *a, **k: calls.append(piece.name) or _fake_compare(piece, *a, **k)
    )
    monkeypatch.setattr(curves, "DATASETS", {"cvc": curves.DATASETS["cvc"]})
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# head\n{curves.MARKERS[0]}\nold\n{curves.MARKERS[1]}\nhand-written note\n")
    results = tmp_path / "curves-cpu.json"
    common = ["--work", str(tmp_path / "work"), "--results", str(results), "--docs", str(docs), "--update-docs"]
    assert curves.main(["--dataset", "cvc", "--budget", "2x5b2", *common]) == 0
    assert curves.main(["--dataset", "cvc", "--budget", "2x5b2", "--seed", "1", *common]) == 0
    # the long budget one trainer a piece (stock comes with the first), then the other three in one piece
    assert curves.main(["--dataset", "cvc", "--budget", "10x5b2", "--trainer", "nnUNetTrainerBSA", *common]) == 0
    assert curves.main(["--dataset", "cvc", "--budget", "10x5b2", *common]) == 0
    data = json.loads(results.read_text())
    budgets = data["datasets"]["cvc"]["budgets"]
    assert set(budgets) == {"2x5b2", "2x5b2s1", "10x5b2"} and set(budgets["10x5b2"]["runs"]) == set(curves.TRAINERS)
    bsa = budgets["10x5b2"]["runs"]["nnUNetTrainerBSA"]
    assert bsa["ci95"][0] < bsa["mean_dice"] < bsa["ci95"][1]
    assert bsa["train_cpu_s"] == pytest.approx(180.0) and bsa["train_wall_s"] == 200.0
    assert budgets["10x5b2"]["tests_vs_stock"]["nnUNetTrainerBSA"]["cases"] == 12
    assert "nnUNetTrainer" not in budgets["10x5b2"]["tests_vs_stock"]
    points = curves.curve_points(data["datasets"]["cvc"], "nnUNetTrainerBSA")
    assert [p["iterations"] for p in points] == [10, 50] and points[0]["seeds"] == [0, 1]
    assert points[0]["seed_sd"] is not None and points[1]["seed_sd"] is None and len(points[0]["seed_dice"]) == 2
    assert points[0]["dice"] == budgets["2x5b2"]["runs"]["nnUNetTrainerBSA"]["mean_dice"]
    text = docs.read_text()
    assert text.startswith("# head\n") and text.endswith(f"{curves.MARKERS[1]}\nhand-written note\n")
    assert "\nold\n" not in text and "| `10x5b2` | 50 | 0 | BSA |" in text and "Seed spread at the short budget" in text
    assert "Polyp papers' metrics" in text and "curves-cpu.png" in text and results.with_suffix(".png").is_file()
    # the driver skips what is done and merged: --all runs only the protocol's pieces not yet finished
    calls.clear()
    monkeypatch.setattr(curves, "SHORT", "2x5b2")
    monkeypatch.setattr(curves, "LONG", "10x5b2")
    monkeypatch.setattr(curves, "SEEDS", (0, 1, 2))
    assert curves.main(["--all", *common]) == 0
    assert calls == [
        "cvc/2x5b2/recipes",
        "cvc/2x5b2s2/all",
        *(f"cvc/10x5b2/{w}" for w in ("stock_AdamW", "NB_AdamW", "BSA_AdamW", "MDSA_AdamW", "Bilateral_SGD")),
    ]
    assert "piece cvc/2x5b2/all: done, skipped" in capsys.readouterr().out
    # the recipes' table: each other recipe against its default, paired on the same test cases
    text = docs.read_text()
    assert "Recipes (SGD <-> AdamW" in text and "| `10x5b2` | BSA | BSA_AdamW | " in text
    assert "| `2x5b2` | stock nnU-Net | AdamW | " in text
    # --report-only merges the finished runs of every begun piece, one still running too, and trains nothing
    calls.clear()
    _fake_compare(curves.Piece("cvc", "20x5b2", ("nnUNetTrainer",)), tmp_path / "work", tmp_path, "")
    monkeypatch.setattr(curves, "LONG", "20x5b2")
    assert curves.main(["--report-only", *common]) == 0
    assert not calls and set(json.loads(results.read_text())["datasets"]["cvc"]["budgets"]["20x5b2"]["runs"]) == {
        "nnUNetTrainer"
    }


def test_a_piece_whose_runs_all_failed_merges_nothing(tmp_path):
    """A piece whose every run failed (its data was broken) adds no empty table: the results stay as they were."""
    piece = curves.Piece("cvc", "2x5b2", ("nnUNetTrainer", "nnUNetTrainerBSA"))
    compare = _fake_compare(piece, tmp_path / "work", tmp_path, "")
    for run in compare["runs"].values():
        run.update(status="failed", reason="nnUNetv2_train failed with exit code 1: see x.log")
    (piece.folder(tmp_path / "work") / "compare.json").write_text(json.dumps(compare))
    results = tmp_path / "curves-cpu.json"
    assert curves.gather_piece(piece, tmp_path / "work", results, "") == {} and not results.exists()
    assert curves.piece_state(piece, tmp_path / "work") == "started"  # run again by the next --all
