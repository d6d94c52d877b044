"""What the autodiscovery startup hook adds to every Python start in an environment where the package is installed.

    .venv/bin/python -m benchmarks.startup_hook            # writes benchmarks/results/startup-hook.json

Builds the wheel, installs it (``--no-deps``: the hook imports nothing else) into a fresh venv, then times
``python -c pass`` there side by side, alternating runs with the installed ``.pth`` enabled and renamed away (the same
interpreter, files and page cache), and counts the instructions of one start each way with valgrind's callgrind
(deterministic: the number to read on a shared, noisy machine; wall-clock medians are reported beside it). Also
reports ``python -X importtime``'s line for the hook's module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from datetime import date
from pathlib import Path

from benchmarks.common import RESULTS, ROOT
from nnunet_sparseattn_autodiscovery import PTH_NAME


def _site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def _time_start(python: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def _instructions(python: Path, env: dict) -> int | None:
    if shutil.which("valgrind") is None:
        return None
    subprocess.run([str(python), "-c", "pass"], env=env, check=True)  # .pyc files written, caches warm
    report = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(python), "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    collected = re.search(r"Collected : (\d+)", report)
    if collected is None:
        raise RuntimeError(f"callgrind reported no instruction count: {report[-500:]}")
    return int(collected.group(1))


def measure(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(ROOT)], check=True
        )
        venv.create(tmp / "env", with_pip=True)
        python = tmp / "env" / "bin" / "python"
        wheels = map(str, (tmp / "dist").glob("*.whl"))
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *wheels], check=True)
        pth = _site_packages(tmp / "env") / PTH_NAME
        off = pth.with_suffix(".off")
        env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH")}
        with_hook, without = [], []
        for _ in range(rounds):
            with_hook.append(_time_start(python, env))
            pth.rename(off)
            without.append(_time_start(python, env))
            off.rename(pth)
        instructions = {"with_hook": _instructions(python, env)}
        pth.rename(off)
        instructions["without"] = _instructions(python, env)
        off.rename(pth)
        importtime = subprocess.run(
            [str(python), "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True, check=True
        ).stderr
        ours = [line.strip() for line in importtime.splitlines() if "nnunet_sparseattn" in line]
    differences = [a - b for a, b in zip(with_hook, without)]
    return {
        "date": str(date.today()),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rounds": rounds,
        "python_c_pass_median_s": {"with_hook": statistics.median(with_hook), "without": statistics.median(without)},
        "added_median_ms": 1e3 * statistics.median(differences),
        "callgrind_instructions": instructions,
        "added_instructions_fraction": (
            instructions["with_hook"] / instructions["without"] - 1
            if instructions["with_hook"] is not None and instructions["without"]
            else None
        ),
        "importtime_us (self | cumulative | module)": ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default=str(RESULTS / "startup-hook.json"))
    args = parser.parse_args()
    result = measure(args.rounds)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
