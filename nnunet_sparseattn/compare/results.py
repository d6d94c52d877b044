"""The results of one comparison (``OUTPUT_FOLDER/compare.json``) and the paired test between two runs."""

from __future__ import annotations

import datetime
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_sparseattn.errors import UserError, reading
from nnunet_sparseattn.harness.budgets import write_json_atomic

RESULTS_FILE = "compare.json"
SCHEMA = 1
# What makes two comparisons the same one: an OUTPUT_FOLDER holds exactly one of each.
IDENTITY = ("dataset", "configuration", "budget")
# Timings of runs on different machines or devices do not compare: refused as well.
SAME_MACHINE = ("device", "machine")


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class ResultsStore:
    """``compare.json``: the comparison's identity (dataset, configuration, budget), the machine, one record per
    run; loaded when it exists (a resumed comparison), rewritten atomically after every change."""

    def __init__(self, folder: Path, header: dict[str, Any]):
        self.path = Path(folder) / RESULTS_FILE
        self.data = dict(header, runs={}, tests=[])
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            self.data = {**old, **{k: v for k, v in header.items() if k != "started"}}

    @staticmethod
    def check(folder: Path, header: dict[str, Any]) -> bool:
        """Refuse (one line) an OUTPUT_FOLDER of another comparison; True when it holds this one already."""
        folder = Path(folder)
        path = folder / RESULTS_FILE
        if not path.is_file():
            if folder.exists() and any(folder.iterdir()):
                raise UserError(
                    f"{folder} is not empty and holds no {RESULTS_FILE}: choose a new folder for the "
                    "comparison (its models, predictions and reports go there)"
                )
            return False
        with reading(path, "the comparison's record"):
            old = json.loads(path.read_text())
        for key in IDENTITY + SAME_MACHINE:
            if old.get(key) != header[key]:
                what = {
                    "budget": f"budget {old.get('budget', {}).get('name')}",
                    "dataset": f"dataset {old.get('dataset', {}).get('name')}",
                }.get(key, f"{key} {old.get(key)}")
                raise UserError(
                    f"{folder} holds a comparison with another {what} (this one: "
                    f"{_identity_text(key, header[key])}): pass another -o OUTPUT_FOLDER, or the same "
                    "arguments to resume it"
                )
        return True

    def run(self, key: str) -> dict[str, Any] | None:
        return self.data["runs"].get(key)

    def set_run(self, key: str, record: dict[str, Any]) -> None:
        self.data["runs"][key] = record
        self.save()

    def save(self) -> None:
        self.data["updated"] = now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


def _identity_text(key: str, value: Any) -> str:
    if key == "budget":
        return f"budget {value['name']}"
    if key == "dataset":
        return f"dataset {value['name']}"
    return f"{key} {value}"


def paired_test(trainer: dict[str, float | None], baseline: dict[str, float | None]) -> dict[str, Any]:
    """Per-case mean Dice of a trainer against a baseline on the cases both scored: mean difference, wins and losses,
    and the two-sided Wilcoxon signed-rank test (scipy) on the differences (zeros dropped, as Wilcoxon's method)."""
    from scipy.stats import wilcoxon

    cases, differences = [], []
    for case in sorted(trainer):
        ours, theirs = trainer[case], baseline.get(case)
        if ours is not None and theirs is not None:
            cases.append(case)
            differences.append(ours - theirs)
    diffs = np.array(differences, dtype=np.float64)
    out: dict[str, Any] = {
        "cases": len(cases),
        "mean_difference": float(diffs.mean()) if len(cases) else None,
        "wins": int((diffs > 0).sum()),
        "losses": int((diffs < 0).sum()),
        "ties": int((diffs == 0).sum()),
        "test": "Wilcoxon signed-rank, two-sided, per-case mean Dice (scipy.stats.wilcoxon)",
    }
    if not len(cases):
        out["p_value"] = None
    elif not diffs.any():
        out["p_value"] = 1.0  # identical on every case
    else:
        with warnings.catch_warnings():  # scipy's normal approximation warns on degenerate inputs
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(wilcoxon(diffs).pvalue)
        out["p_value"] = None if math.isnan(p) else p
    return out


def smallest_p_value(cases: int) -> float:
    """The smallest two-sided p the exact Wilcoxon test reaches with ``cases`` nonzero differences: 2 / 2^n."""
    return 2.0 / 2**cases if cases else 1.0
