"""What every benchmark shares: the checkout's folders, the command line it records, writing its results JSON and
its section of BENCHMARKS.md, and the CPU/CUDA measuring helpers more than one of them needs.

Torch is imported inside the helpers that need it, so that the report-only benchmarks (accuracy, curves, optimizer)
start without it.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "BENCHMARKS.md"
PLANS_DIR = ROOT / "benchmarks" / "plans"  # the nnU-Net plans the speed and memory benchmarks run on
DATA = ROOT.parent / "shared" / "data"  # the project's shared data sets, beside the checkout


def command_line(name: str, argv: Sequence[str]) -> str:
    """How benchmark ``name`` was run, as its results record it: ``python -m benchmarks.<name> <argv>``."""
    return shlex.join(["python", "-m", f"benchmarks.{name}", *argv])


# ----------------------------------------------------------------------------------------------- BENCHMARKS.md
def splice_section(document: str, section: str, markers: tuple[str, str]) -> str:
    """``document`` with the text between the markers replaced by ``section``."""
    from nnunet_sparseattn.errors import UserError

    begin, end = markers
    if document.count(begin) != 1 or document.count(end) != 1 or document.index(begin) > document.index(end):
        raise UserError(
            f"BENCHMARKS.md needs exactly one {begin} followed by one {end} where the section goes: add "
            "them, then run with --update-docs again"
        )
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{section.rstrip()}\n{end}{tail}"


def check_section(docs: Path, markers: tuple[str, str]) -> None:
    """Refuse (``UserError``) before hours of measuring when ``--update-docs`` could not write the section after."""
    splice_section(docs.read_text() if docs.is_file() else "", "", markers)


def update_section(docs: Path, section: str, markers: tuple[str, str]) -> None:
    """Write ``section`` between its markers in ``docs``."""
    docs.write_text(splice_section(docs.read_text(), section, markers))


def add_docs_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    """``--update-docs`` (rewrite the benchmark's section of BENCHMARKS.md) and the hidden ``--docs`` (another file
    in its place: the tests')."""
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the {section} section of {DOCS.name}")
    parser.add_argument("--docs", type=Path, default=DOCS, help=argparse.SUPPRESS)


def add_publish_arguments(parser: argparse.ArgumentParser, out: Path) -> None:
    """The ``--out``, ``--update-docs`` and ``--table`` options of a benchmark that writes one results JSON."""
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--update-docs", action="store_true", help="write the BENCHMARKS.md section")
    parser.add_argument(
        "--table",
        type=Path,
        help="the section of an existing results JSON (with --update-docs: written to BENCHMARKS.md), then exit",
    )


def write_results(path: Path, results: Any) -> None:
    """The results JSON, indented one space a level (as every results file here is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def publish(section: str, markers: tuple[str, str], update_docs: bool, docs: Path = DOCS) -> None:
    """Print a results section; with ``update_docs``, also write it between its markers in BENCHMARKS.md."""
    print(section)
    if update_docs:
        update_section(docs, section, markers)


# ------------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def memory_events(prof: Any) -> list[tuple[int, int]]:
    """The CPU allocation (+bytes) and free (-bytes) events of a ``torch.profiler.profile(profile_memory=True)``
    run, as (time, bytes)."""
    import torch

    return [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]


def cpu_peak_bytes(events: Sequence[tuple[int, int]]) -> int:
    """Peak of the running sum of (time, bytes) allocation (+) and free (-) events, in time order."""
    current = peak = 0
    for _, n in sorted(events):
        current += n
        peak = max(peak, current)
    return int(peak)
