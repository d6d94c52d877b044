"""Checks and steps the end-to-end tests share (asserts rewritten by pytest: registered in conftest.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def plan_variant(run: dict, variant: str, configuration: str) -> Path:
    """``nnunet-sparseattn plan -d ID --variant VARIANT -c CONFIGURATION`` as a user types it, in the prepared
    dataset's environment; returns the variant plans file it wrote."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "nnunet-sparseattn"), "plan", "-d", str(run["id"]), "--variant", variant,
         "-c", configuration],
        env=run["env"], capture_output=True, text=True,
    )
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
