"""What the demo shows: Dice per structure (one column per trainer), a PNG of image, ground truth and predictions
with the class colours named, and the line that says how routing relates to the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def dice_table(summaries: Sequence[tuple[str, dict]], labels: dict[str, int]) -> str:
    """nnU-Net's evaluation ``summary.json`` of each trainer as one column, one row per structure named as in
    dataset.json (with the number of cases that have it)."""
    names = {str(value): name for name, value in labels.items()}
    first = summaries[0][1]
    header = ("structure", *[t for t, _ in summaries], "cases")
    rows = [header]
    for key in first["mean"]:
        cases = sum(1 for case in first["metric_per_case"] if not np.isnan(case["metrics"][key]["Dice"]))
        rows.append((names.get(key, key), *[f"{s['mean'][key]['Dice']:.3f}" for _, s in summaries], str(cases)))
    rows.append(("mean (foreground)", *[f"{s['foreground_mean']['Dice']:.3f}" for _, s in summaries], ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    )


def budget_line(trainer: str, record: Optional[dict]) -> str:
    """What the time budget did to a ``_demo`` training (the fold folder's ``time_budget.json``): empty when it
    trained the whole planned schedule, else one line saying how much of it the budget allowed and why."""
    if not record or record["epochs"] >= record["planned_epochs"]:
        return ""
    epochs, planned, iterations = record["epochs"], record["planned_epochs"], record["iterations_per_epoch"]
    return (
        f"note: the time budget of {record['time_budget_s']:.0f} s allowed {trainer} {epochs} epoch(s) of "
        f"{iterations} iterations, {epochs / planned:.0%} of the planned {planned} (a training step took "
        f"{record['step_s']:.1f} s; a busy or slow machine?): its Dice is below what the full schedule reaches"
    )


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def save_comparison_png(
    cases: list[tuple[Path, Path, Sequence[Path]]],
    output: Path,
    labels: dict[str, int],
    prediction_names: Sequence[str],
) -> Path:
    """One row per case: image, ground truth and each prediction, at the axial slice showing the most structures
    (ties: the most foreground), so small structures appear beside large ones; a legend names the class colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    values = [v for v in labels.values() if isinstance(v, int) and v > 0]
    tab10 = plt.get_cmap("tab10")
    colours = [tab10(i % 10) for i in range(max(values, default=1) + 1)]  # as explain's pictures colour them
    cmap = ListedColormap(colours)
    columns = ["image", "ground truth", *prediction_names]
    fig, axes = plt.subplots(
        len(cases),
        len(columns),
        figsize=(3 * len(columns), 3 * len(cases) + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for row, (image_path, gt_path, predictions) in zip(axes, cases):
        image, gt = _read(image_path), _read(gt_path)
        shown: list[Optional[np.ndarray]] = [None, gt, *[_read(p) for p in predictions]]
        per_slice = gt.reshape(gt.shape[0], -1)
        structures = np.array([len(np.unique(s[s > 0])) for s in per_slice])
        z = int(np.lexsort(((per_slice > 0).sum(1), structures))[-1])
        for ax, data, title in zip(row, shown, columns):
            ax.imshow(image[z], cmap="gray")
            if data is not None:
                ax.imshow(
                    np.ma.masked_equal(data[z], 0),
                    cmap=cmap,
                    vmin=-0.5,
                    vmax=len(colours) - 0.5,
                    alpha=0.6,
                    interpolation="nearest",
                )
            ax.set_title(f"{title}\n{image_path.name.split('_0000')[0]}, axial slice {z}", fontsize=8)
            ax.axis("off")
    handles = [Patch(color=colours[v], label=f"{v}: {n}") for n, v in labels.items() if isinstance(v, int) and v > 0]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def routing_table(explained: dict, cases: int) -> str:
    """Routing at work, from ``explain``'s statistics pooled over the held-out cases: for queries inside the smallest
    structure (the nodule of the synthetic data), the share of the key regions they routed to that contain foreground,
    beside the share of all key regions that do (chance), per routed attention module; the same without the query's
    own region (which holds the query, so it always contains foreground); and for the structure itself. Empty when
    nothing was routed."""
    stats = {module: per_label for module, per_label in explained.get("routing_foreground", {}).items() if per_label}
    if not stats:
        return ""
    first = next(iter(stats.values()))
    name = "nodule" if "nodule" in first else min(first, key=lambda n: first[n]["queries"])
    queries = first[name]["queries"]
    header = ("attention module", "routed: foreground", "all: foreground", "own region left out", f"{name} itself")
    rows = [header]
    for module, per_label in stats.items():
        s = per_label.get(name)
        if s is None:
            continue
        rows.append(
            (
                module,
                f"{100 * s['routed_with_foreground']:.0f}%",
                f"{100 * s['all_with_foreground']:.0f}%",
                f"{100 * s['routed_with_foreground_other']:.0f}% vs {100 * s['all_with_foreground_other']:.0f}%",
                f"{100 * s['routed_with_label']:.0f}% vs {100 * s['all_with_label']:.0f}%",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        f"queries inside the {name} ({queries} voxels of the reference, {cases} held-out cases): the share of the key "
        "regions they route to that contain foreground (any labelled voxel), beside the share of all key regions that "
        "do (what routing at random would give)"
    ]
    lines += [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    return "\n".join(lines)
