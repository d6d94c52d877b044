"""What the demo shows: a table of Dice per structure and a PNG of image, ground truth and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def dice_table(summary: dict, labels: dict[str, int]) -> str:
    """Format nnU-Net's evaluation ``summary.json`` as one row per structure, named as in dataset.json."""
    names = {str(value): name for name, value in labels.items()}
    rows = [("structure", "Dice", "cases")]
    for key, metrics in summary["mean"].items():
        cases = sum(1 for case in summary["metric_per_case"] if not np.isnan(case["metrics"][key]["Dice"]))
        rows.append((names.get(key, key), f"{metrics['Dice']:.3f}", str(cases)))
    rows.append(("mean (foreground)", f"{summary['foreground_mean']['Dice']:.3f}", ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>6}  {c:>5}" for a, b, c in rows)


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def save_comparison_png(cases: list[tuple[Path, Path, Path]], output: Path, num_labels: int) -> Path:
    """One row per case (image, ground truth, prediction) at the axial slice showing the most structures
    (ties: the most foreground), so small structures appear beside large ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, (image_path, gt_path, prediction_path) in zip(axes, cases):
        image, gt, prediction = _read(image_path), _read(gt_path), _read(prediction_path)
        per_slice = gt.reshape(gt.shape[0], -1)
        structures = np.array([len(np.unique(s[s > 0])) for s in per_slice])
        z = int(np.lexsort(((per_slice > 0).sum(1), structures))[-1])
        for ax, data, title in zip(row, (image[z], gt[z], prediction[z]), ("image", "ground truth", "prediction")):
            if title == "image":
                ax.imshow(data, cmap="gray")
            else:
                ax.imshow(image[z], cmap="gray")
                ax.imshow(
                    np.ma.masked_equal(data, 0),
                    cmap="tab10",
                    vmin=0,
                    vmax=max(9, num_labels),
                    alpha=0.6,
                    interpolation="nearest",
                )
            ax.set_title(f"{image_path.name.split('_0000')[0]}: {title} (slice {z})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output
