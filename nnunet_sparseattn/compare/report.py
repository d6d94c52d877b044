"""What a comparison shows: a Markdown table (``compare.md``) and a PNG (Dice against s/iter; per-case Dice)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from nnunet_sparseattn.compare.results import smallest_p_value
from nnunet_sparseattn.evaluation.evaluate import markdown_table


def num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def size(n: float | None, unit: str = "", binary: bool = False) -> str:
    if n is None:
        return "–"
    scales = (
        ((2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki"))
        if binary
        else ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
    )
    for scale, prefix in scales:
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".strip()


def p_value(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 1e-3 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def versus(test: dict[str, Any] | None) -> str:
    """``+2.1 (p 0.031, 12/16 better)``: mean per-case Dice difference in points, the test, the wins."""
    if test is None or test["mean_difference"] is None:
        return "–"
    return f"{100 * test['mean_difference']:+.1f} (p {p_value(test['p_value'])}, {test['wins']}/{test['cases']} better)"


def baselines(results: dict[str, Any]) -> list[tuple[str, dict]]:
    return [(k, r) for k, r in results["runs"].items() if r.get("baseline")]


def results_table(results: dict[str, Any], dataset: str | None = None) -> str:
    """One row per run: Dice, the paired test against each baseline, HD95, cost, status. ``dataset`` adds a first
    column (several comparisons in one table)."""
    refs = baselines(results)
    tests = {(t["run"], t["baseline"]): t for t in results.get("tests", [])}
    head = ["trainer", "plans", "mean Dice", "Dice per class"]
    head += [f"vs {r.get('label', k)}: Dice points (p, better)" for k, r in refs]
    head += ["HD95 per class", "s/iter", "s/case", "peak memory", "params", "FLOPs", "status"]
    if dataset is not None:
        head = ["dataset"] + head
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in results["runs"].items():
        done = r.get("status") == "done"
        status = r.get("status", "?") if done else f"{r.get('status')}: {r.get('reason', 'unfinished')}"
        dice = ", ".join(f"{k} {num(v)}" for k, v in r.get("dice", {}).items()) or "–"
        hd = ", ".join(f"{k} {num(v, 2)}" for k, v in r.get("hd95", {}).items()) or "–"
        cells = [r.get("label", key), f"`{r.get('plans', '')}`", num(r.get("mean_dice")), dice]
        cells += ["–" if r.get("baseline") else versus(tests.get((key, ref_key))) for ref_key, _ in refs]
        cells += [
            hd,
            num(r.get("s_per_iter")),
            num(r.get("s_per_case"), 2),
            size(r.get("peak_memory_bytes"), "B", binary=True),
            size(r.get("params")),
            size(r.get("flops")),
            status,
        ]
        if dataset is not None:
            cells = [dataset] + cells
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_test_note(results: dict[str, Any]) -> str:
    cases = max((t["cases"] for t in results.get("tests", [])), default=0)
    note = (
        "Dice points: mean over the held-out cases of the trainer's per-case mean Dice minus the baseline's. "
        "p: two-sided Wilcoxon signed-rank test on those per-case differences (scipy); below 0.05 the "
        "difference is unlikely to be noise. better: cases where the trainer scored higher."
    )
    if cases and smallest_p_value(cases) >= 0.05:
        note += (
            f" With {cases} cases no difference can reach p < 0.05 (the smallest possible p is "
            f"{smallest_p_value(cases):.3f}): predict more cases for a verdict."
        )
    return note


def render_markdown(results: dict[str, Any]) -> str:
    dataset = results["dataset"]
    heldout = results.get("heldout", {})
    cases = sum(len(c) for c in heldout.get("cases", {}).values())
    where = (
        "imagesTs (labelsTs), predicted by the ensemble of the trained folds"
        if heldout.get("kind") == "test"
        else "each fold's validation cases, predicted by that fold's model"
    )
    lines = [
        f"# {dataset['name']} `{results['configuration']}`: compare",
        "",
        f"Command: `{results.get('command') or 'nnunet-sparseattn compare'}`  ",
        f"Budget `{results['budget']['name']}`: {results['budget_text']}.  ",
        f"Device: {results['device']} ({results['machine']}); torch {results.get('torch')}, nnU-Net "
        f"{results.get('nnunetv2')}.  ",
        f"Held-out cases: {cases}, {where}.  ",
        f"From {results.get('started', '?')} to {results.get('updated', '?')} (resumed runs included).",
        "",
        results_table(results),
        "",
        paired_test_note(results),
        "",
    ]
    evaluated = [
        (r.get("label", k), r["evaluate"])
        for k, r in results["runs"].items()
        if r.get("status") == "done" and r.get("evaluate")
    ]
    if evaluated:
        lines += [
            "`nnunet-sparseattn evaluate`'s metrics of the same predictions (the predicted masks):",
            "",
            markdown_table(evaluated),
        ]
    return "\n".join(lines)


def draw(results: dict[str, Any], left, right, keys: list[str] | None = None) -> bool:
    """Onto two matplotlib axes: mean Dice against training time per iteration, one marker per finished run (left);
    per-case mean Dice as a box plot per run (right). ``keys``: the runs to draw (default all). False when no run
    is done."""
    done = [
        (r.get("label", k), r)
        for k, r in results["runs"].items()
        if r.get("status") == "done" and (keys is None or k in keys)
    ]
    if not done:
        return False
    for label, r in done:
        left.scatter(r["s_per_iter"], r["mean_dice"], s=60, marker="s" if r.get("baseline") else "o", label=label)
        left.annotate(label, (r["s_per_iter"], r["mean_dice"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    left.set_xlabel("training time per iteration (s)")
    left.set_ylabel("mean Dice (held-out cases)")
    left.set_title(f"{results['dataset']['name']} {results['configuration']}", fontsize=9)
    left.grid(alpha=0.3)
    per_case = [[v["mean_dice"] for v in r["per_case"].values() if v["mean_dice"] is not None] for _, r in done]
    right.boxplot(per_case, tick_labels=[label for label, _ in done], showmeans=True)
    right.set_ylabel("per-case mean Dice")
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    right.grid(alpha=0.3, axis="y")
    return True


def plot(comparisons: list[tuple[dict[str, Any], list[str] | None]], path: Path, title: str) -> Path | None:
    """One row of :func:`draw` per comparison (results, runs to draw); None (and no file) while no run is done."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(comparisons), 2, figsize=(11, 4.2 * len(comparisons)), squeeze=False)
    drawn = [draw(results, left, right, keys) for (results, keys), (left, right) in zip(comparisons, axes)]
    if not any(drawn):
        plt.close(fig)
        return None
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(results: dict[str, Any], path: Path) -> Path | None:
    """``compare.png``: the comparison's two panels."""
    budget = results["budget"]
    return plot(
        [(results, None)],
        path,
        f"budget {budget['name']} ({budget['num_epochs']} x "
        f"{budget['num_iterations_per_epoch']} iterations), {results['machine']}",
    )
