"""Checks and steps the end-to-end tests share (asserts rewritten by pytest: registered in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_SCRIPT = Path(sys.executable).parent / "nnunet-sparseattn"
# the console script as a user types it; ``python -m`` where the environment has no scripts folder
CLI_COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "nnunet_sparseattn.cli"]


def run_cli(*args: object, env: dict | None = None, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """``nnunet-sparseattn ARGS...`` in a child process (``env`` replaces the environment when given, as
    ``subprocess.run``'s does); output captured as text."""
    return subprocess.run(
        [*CLI_COMMAND, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def plan_variant(run: dict, variant: str, configuration: str) -> Path:
    """``nnunet-sparseattn plan -d ID --variant VARIANT -c CONFIGURATION`` as a user types it, in the prepared
    dataset's environment; returns the variant plans file it wrote."""
    result = run_cli("plan", "-d", run["id"], "--variant", variant, "-c", configuration, env=run["env"])
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.splitlines()[0])


def assert_dice(summary: dict, labels: list[str], cases: int | None = None) -> None:
    """nnU-Net's evaluation summary scores exactly ``labels``, each Dice a float in [0, 1] (as is the foreground
    mean), over ``cases`` cases when given."""
    assert sorted(summary["mean"]) == sorted(labels)
    for key in labels:
        dice = summary["mean"][key]["Dice"]
        assert isinstance(dice, float) and 0.0 <= dice <= 1.0, (key, dice)
    assert 0.0 <= summary["foreground_mean"]["Dice"] <= 1.0
    if cases is not None:
        assert len(summary["metric_per_case"]) == cases


def assert_predicted(predictions: Path, references: Path, labels: set[int]) -> None:
    """``predictions`` holds one label map per reference in ``references`` (same file name), on the reference's
    grid (size, spacing, origin, direction), with values among ``labels``. Checked in the test's process: nnU-Net's
    own scoring of our networks' predictions is its final validation, which every ``nnUNetv2_train`` here runs
    (``validation/summary.json``), and ``nnUNetv2_evaluate_folder`` runs in the NB and BSA end-to-end tests."""
    import numpy as np
    import SimpleITK as sitk

    wanted = sorted(p.name for p in references.iterdir() if p.is_file())
    assert wanted and sorted(p.name for p in predictions.iterdir() if p.name in wanted) == wanted, wanted
    for name in wanted:
        reference, predicted = (sitk.ReadImage(str(folder / name)) for folder in (references, predictions))
        assert predicted.GetSize() == reference.GetSize(), name
        assert np.allclose(predicted.GetSpacing(), reference.GetSpacing()), name
        assert np.allclose(predicted.GetOrigin(), reference.GetOrigin()), name
        assert np.allclose(predicted.GetDirection(), reference.GetDirection()), name
        assert set(np.unique(sitk.GetArrayFromImage(predicted)).tolist()) <= labels, name


def explain(
    run: dict, trainer: str, configuration: str, image: Path, output: Path, *extra: str, plans: str = "nnUNetPlans"
) -> str:
    """``nnunet-sparseattn explain -d ID -c CONFIGURATION -tr TRAINER -p PLANS -i IMAGE -o OUTPUT`` as a user types
    it, in the prepared dataset's environment; returns what it printed."""
    started = time.monotonic()
    result = run_cli(
        "explain",
        "-d",
        run["id"],
        "-c",
        configuration,
        "-tr",
        trainer,
        "-p",
        plans,
        "-i",
        image,
        "-o",
        output,
        *extra,
        env=run["env"],
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"nnunet-sparseattn explain ({trainer}, {configuration}) took {time.monotonic() - started:.1f} s")  # -rP
    return result.stdout


def assert_explained(output: Path, image: Path, kinds: set[str]) -> dict:
    """``explain`` wrote, for every query point, the pictures and maps of each kind of attention the network has
    (``routed``: routing and regions, ``coarse``: BSA's coarse attention, ``window``: Swin window weights,
    ``channel``: FSAM, ``rendering``); 3D maps are NIfTI in the image's geometry, 2D maps one NPZ per point. Returns
    explain.json."""
    import json

    import numpy as np
    import SimpleITK as sitk

    summary = json.loads((output / "explain.json").read_text())
    assert (output / "case.png").is_file() and (output / "overview.png").is_file()
    assert summary["points"], summary
    source = sitk.ReadImage(str(image))
    is_3d = source.GetDimension() == 3
    point_folders = sorted(p for p in (output / "points").iterdir())
    assert len(point_folders) == len(summary["points"])
    for folder in point_folders:
        names = {p.name for p in folder.iterdir()}
        if "routed" in kinds:
            assert any(n.endswith("_routing.png") for n in names), names
        if "window" in kinds:
            assert any(n.endswith(".isam_window.png") for n in names), names
        if not is_3d:
            maps = np.load(folder / "maps.npz")
            keys = set(maps.files)
            assert (
                ("routed" not in kinds or any(k.endswith("_regions") for k in keys))
                and ("coarse" not in kinds or any(k.endswith("_coarse") for k in keys))
                and ("window" not in kinds or any(k.endswith("_window") for k in keys))
            ), keys
            assert all(maps[k].shape == (source.GetSize()[1], source.GetSize()[0]) for k in keys)
            continue
        wanted = {"routed": "_regions.nii.gz", "coarse": "_coarse.nii.gz", "window": "_window.nii.gz"}
        for kind, ending in wanted.items():
            if kind in kinds:
                written = [n for n in names if n.endswith(ending)]
                assert written, (kind, names)
                drawn = sitk.ReadImage(str(folder / written[0]))
                assert drawn.GetSize() == source.GetSize()
                assert np.allclose(drawn.GetSpacing(), source.GetSpacing())
                assert np.allclose(drawn.GetOrigin(), source.GetOrigin())
                assert np.allclose(drawn.GetDirection(), source.GetDirection())
    if "channel" in kinds:
        assert (output / "fsam_channel_weights.png").is_file()
    if "rendering" in kinds:
        assert (output / "rendering.png").is_file() and summary["modules"]["rendering"]["refined_voxels"] > 0
    return summary
