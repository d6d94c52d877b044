"""The network speed benchmark's reporting: the Markdown tables of a results JSON (per plan: the networks side by
side, before against after, the costliest operators and where a step's time goes) and BENCHMARKS.md's section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from benchmarks.common import DOCS, RESULTS, update_section
from benchmarks.speed.measure import PLANNER_VRAM_BYTES

MARKERS = ("<!-- network-speed:begin -->", "<!-- network-speed:end -->")
SCHEMA = 1  # results files of another schema are left out of the section


def _s(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3g}"


def _gib(x: Optional[int]) -> str:
    return "–" if x is None else f"{x / 2**30:.2f} GiB"


def _range(stats: Optional[dict]) -> str:
    if not stats:
        return "–"
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


def plan_table(result: dict, plan_name: str) -> str:
    plan = result["plans"][plan_name]
    cuda = result["device"] == "cuda"
    cpu = not cuda
    head = (
        "| network | params | GFLOPs fwd | s/step | vs stock: s/step | FLOPs | time per FLOP | "
        + ("CPU time per FLOP | " if cpu else "")
        + "peak memory "
        "| vs stock | "
        + ("of the planner's 8 GB | " if cuda else "")
        + ("compile s | graph breaks | " if result["mode"] == "compiled" else "")
        + "inference s/case (tiles) | "
        + ("inference peak | " if cuda else "")
        + "status |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for entry in plan["networks"].values():
        vs = entry.get("vs_stock", {})
        inf = entry.get("inference", {})
        cells = [
            entry["label"],
            f"{entry['params'] / 1e6:.2f} M" if "params" in entry else "–",
            f"{entry['flops'] / 1e9:.1f}" if "flops" in entry else "–",
            _s(entry.get("s_per_step")),
            _range(vs.get("s_per_step")),
            f"{vs['flops']:.2f}" if "flops" in vs else "–",
            _range(vs.get("time_per_flop")),
        ]
        if cpu:
            cells.append(_range(vs.get("cpu_time_per_flop")))
        cells += [_gib(entry.get("peak_bytes")), f"{vs['peak_bytes']:.2f}" if "peak_bytes" in vs else "–"]
        if cuda:  # the planning target holds at the plans' batch only
            peak = entry.get("peak_bytes")
            cells.append("–" if peak is None else f"{peak / PLANNER_VRAM_BYTES:.0%}")
        if result["mode"] == "compiled":
            cells += [_s(entry.get("compile_s")), str(entry.get("graph_breaks", "–"))]
        cells.append(f"{inf['s_per_case']:.3g} ({inf['tiles']})" if "s_per_case" in inf else inf.get("status", "–"))
        if cuda:
            cells.append(_gib(inf.get("peak_bytes")))
        status = entry.get("status", "–")
        if entry.get("losses_finite") is False:
            status += ", NON-FINITE LOSS"
        cells.append(status)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def before_table(result: dict, plan_name: str) -> str:
    """Our networks before (``--before``) and after, timed in the same rounds: ratios to the same stock steps."""
    plan = result["plans"][plan_name]
    if "before" not in plan:
        return ""
    rows = [
        "| network | time per FLOP vs stock: before | after | CPU time per FLOP: before | after | s/step: before "
        "| after | first loss: before - after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, old in plan["before"]["networks"].items():
        new = plan["networks"][key]
        ov, nv = old.get("vs_stock", {}), new.get("vs_stock", {})
        diff = old.get("first_loss_difference")
        rows.append(
            f"| {new['label']} | {_range(ov.get('time_per_flop'))} | {_range(nv.get('time_per_flop'))} | "
            f"{_range(ov.get('cpu_time_per_flop'))} | {_range(nv.get('cpu_time_per_flop'))} | "
            f"{_s(old.get('s_per_step'))} | {_s(new.get('s_per_step'))} | "
            f"{'–' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(rows)


def ops_table(result: dict, plan_name: str) -> str:
    """Rank x network: the ten most expensive operators of one step, with their share of the step's self time."""
    nets = [e for e in result["plans"][plan_name]["networks"].values() if e.get("top_ops")]
    if not nets:
        return ""
    rows = ["| # | " + " | ".join(e["label"] for e in nets) + " |", "|---|" + "---|" * len(nets)]
    for i in range(max(len(e["top_ops"]) for e in nets)):
        cells = []
        for e in nets:
            op = e["top_ops"][i] if i < len(e["top_ops"]) else None
            cells.append("" if op is None else f"`{op['op'].removeprefix('aten::')}` {op['share']:.0%}")
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# What the ten costliest operators of a step are grouped into for the time split (see ``split_table``)
OP_GROUPS = (
    ("convolutions", lambda op: "convolution" in op),
    ("attention and linear", lambda op: "scaled_dot_product" in op or op in ("aten::mm", "aten::bmm", "aten::addmm")),
    ("layout copies (`copy_`)", lambda op: op == "aten::copy_"),
)


def split_table(result: dict, plan_name: str) -> str:
    """Network x group: ms of one profiled step in convolutions, attention and linear layers, layout copies and the
    rest, from the ten costliest operators (the step's total is implied by their shares; "everything else" is the
    total minus the three groups: norms, activations, adds and every operator outside the ten)."""
    nets = [e for e in result["plans"][plan_name]["networks"].values() if e.get("top_ops")]
    if not nets:
        return ""
    head = ["network", "step (profiled)", *(name for name, _ in OP_GROUPS), "everything else"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for e in nets:
        ops = [o for o in e["top_ops"] if o["share"] > 0]
        total = sum(o["self_ms"] for o in ops) / sum(o["share"] for o in ops)
        groups = [sum(o["self_ms"] for o in ops if member(o["op"])) for _, member in OP_GROUPS]
        cells = [f"{total:.0f}", *(f"{g:.0f}" for g in groups), f"{total - sum(groups):.0f}"]
        rows.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render(result: dict) -> str:
    lines = [
        f"### {result['device'].upper()}, {result['mode']} ({result['precision']}) on {result['machine']} "
        f"({result['date']})",
        "",
        f"Command: `{result['command']}` at commit {str(result.get('commit'))[:10]}  ",
        f"torch {result['torch']}, {result['threads']} threads, {result['repeats']} rounds x "
        f"{result['steps_per_round']} step(s), load average {result.get('load_average_start')} at the start, "
        f"{result.get('load_average_end')} at the end, {result.get('wall_s', 0) / 60:.0f} min. Ratios are "
        "medians (min-max) of per-round ratios; FLOPs: the training forward, attention counted as its "
        "arithmetic (`countable_attention`; before: the same count where the network has the same parameters); "
        "CPU time: the process's own CPU seconds (steadier under load).",
        "",
    ]
    for name, plan in result["plans"].items():
        lines += [
            f"**{name}**: patch {'x'.join(map(str, plan['patch_size']))}, batch {plan['batch_size']} (plans: "
            f"{plan['plans_batch_size']}), {plan['input_channels']} input channel(s), {plan['num_classes']} "
            f"classes. Plans: {plan['source']}.",
            "",
            plan_table(result, name),
            "",
        ]
        if "before" in plan:
            lines += [
                f"Before (`{plan['before']['ref']}`, {plan['before']['commit'][:10]}) and after, in the same rounds:",
                "",
                before_table(result, name),
                "",
            ]
        ops = ops_table(result, name)
        if ops:
            lines += [
                "Ten most expensive operators of one step (self time, share of the step):",
                "",
                ops,
                "",
                "Where that step's time goes, ms (the ten operators grouped; everything else: the step minus them):",
                "",
                split_table(result, name),
                "",
            ]
    return "\n".join(lines)


def render_section(files: Sequence[Path]) -> str:
    parts = [
        "<!-- written by benchmarks/network_speed.py from benchmarks/results/network-speed-*.json: do not edit -->"
    ]
    for path in files:
        result = json.loads(path.read_text())
        if result.get("schema") == SCHEMA:
            parts += ["", render(result)]
    return "\n".join(parts) + "\n"


def update_docs(docs: Path = DOCS, results: Path = RESULTS) -> None:
    files = sorted(p for p in results.glob("network-speed-*.json") if not p.stem.endswith("-tiny"))
    update_section(docs, render_section(files), MARKERS)
    print(f"updated the network-speed section of {docs}")
