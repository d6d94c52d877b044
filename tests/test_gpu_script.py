"""The prepared GPU run (benchmarks/gpu.sh) cannot rot: its dry run takes every step on the CPU at tiny sizes, with the
modules the GPU machine lacks made unimportable, and its test lists cover every module with gpu-marked tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _gpu_sh(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_WAIT_POLICY="PASSIVE")
    env.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _summary(out: Path, command: str) -> dict:
    assert sorted(p.name for p in out.iterdir()) == [f"gpu-{command}.{e}" for e in ("json", "log", "tar.gz")]
    return json.loads((out / f"gpu-{command}.json").read_text())


def _listed(name: str) -> list[str]:
    match = re.search(rf'^{name}="([^"]*)"', SCRIPT.read_text(), re.MULTILINE)
    assert match, name
    return match.group(1).split()


def test_the_test_lists_hold_every_module_with_gpu_tests_split_by_what_they_import(tmp_path):
    marked = sorted(
        f"tests/{p.name}"
        for p in (ROOT / "tests").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.gpu\b", p.read_text(), re.MULTILINE)
    )
    main, nnunet = _listed("MAIN_TESTS"), _listed("NNUNET_TESTS")
    assert sorted(main + nnunet) == marked and not set(main) & set(nnunet)
    # with SimpleITK unimportable (the main command has none) the main list imports and the other does not
    blocked = tmp_path / "SimpleITK"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('no SimpleITK')\n")
    check = (
        "import importlib, sys\n"
        "for m in sys.argv[1:]:\n"
        "    try:\n        importlib.import_module(m); print(m, 'ok')\n"
        "    except ImportError:\n        print(m, 'needs SimpleITK')\n"
    )
    names = [Path(m).stem for m in main + nnunet]
    # the test modules import their helpers as top-level modules (pytest puts tests/ on sys.path): so does this
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "tests"), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-c", check, *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    verdicts = dict(
        line.rsplit(" ", 1) if line.endswith(" ok") else line.split(" ", 1) for line in result.stdout.splitlines()
    )
    assert verdicts == {**{Path(m).stem: "ok" for m in main}, **{Path(m).stem: "needs SimpleITK" for m in nnunet}}


@pytest.mark.slow  # ~45 s on 2 quiet cores: four Python processes at tiny sizes
def test_the_main_command_runs_every_step_on_the_cpu_without_simpleitk(tmp_path):
    result = _gpu_sh("main", "--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = _summary(tmp_path, "main")
    assert [s["step"] for s in summary["steps"]] == [
        "env",
        "tests",
        "speed-eager",
        "speed-compiled",
        "attention",
        "memory",
    ]
    assert all(s["status"] == "ok" for s in summary["steps"])
    results = summary["results"]
    for name, plans in (
        ("network-speed-cpu-eager.json", {"hippocampus_3d_fullres", "isic2017_2d"}),
        ("network-speed-cpu-compiled.json", {"hippocampus_3d_fullres"}),
    ):
        assert set(results[name]["plans"]) == plans
        for plan in results[name]["plans"].values():
            assert [e["status"] for e in plan["networks"].values()] == ["done"] * 4
    compiled = results["network-speed-cpu-compiled.json"]["plans"]["hippocampus_3d_fullres"]["networks"]
    assert all("graph_breaks" in e and "compile_s" in e for e in compiled.values())
    eager = results["network-speed-cpu-eager.json"]["plans"]["isic2017_2d"]["networks"]
    assert all(e["inference"]["finite"] for e in eager.values())
    assert {r["backend"] for r in results["attention-cpu.json"]} == {"dense", "gather"}
    memory = results["training-memory-cpu.json"]["plans"]["hippocampus_3d_fullres"]["networks"]
    assert set(memory["bsa"]) == {"label", "plain", "checkpointed"}
    for measured in (memory["bsa"]["plain"], memory["bsa"]["checkpointed"], memory["stock"]["plain"]):
        assert measured["step_peak_bytes"] > 0 and measured["predicted_total_bytes"] > 0
    with tarfile.open(tmp_path / "gpu-main.tar.gz") as tar:
        names = tar.getnames()
    assert "results/pytest-gpu.xml" in names and "logs/speed-eager.log" in names


def test_only_reruns_one_step_and_refusals_are_one_line(tmp_path):
    result = _gpu_sh("main", "--dry-run", "--only", "tests", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [s["step"] for s in _summary(tmp_path, "main")["steps"]] == ["env", "tests"]
    for args, words in (
        (["main", "--only", "train"], "main has no step 'train'"),
        ([], "name a command"),
        (["main", "--bogus"], "unknown argument '--bogus'"),
    ):
        refused = _gpu_sh(*args, "--dry-run")
        assert refused.returncode == 2 and words in refused.stderr and len(refused.stderr.splitlines()) == 1


@pytest.mark.slow  # ~60 s on 2 quiet cores: planning 5 cases, then nnUNetv2_train and nnUNetv2_predict on the CPU
def test_the_nnunet_command_trains_and_predicts_through_nnunets_cli(shared_data, tmp_path):
    data = tmp_path / "data"
    prepare = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_nnunet",
            "prepare",
            "--data",
            str(data),
            "--cases",
            "5",
            "--predict-cases",
            "1",
            "--msd",
            str(shared_data / "Task04_Hippocampus"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    assert json.loads((data / "dataset.json").read_text())["bytes"] < 8 * 2**20  # travels with the command
    assert not any((data / "work" / "nnUNet_raw").iterdir())
    out = tmp_path / "out"
    result = _gpu_sh("nnunet", "--dry-run", "--data", str(data), "--out", str(out), timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = _summary(out, "nnunet")
    assert [s["step"] for s in summary["steps"]] == ["env", "tests-nnunet", "train", "predict"]
    train = summary["results"]["nnunet-train.json"]
    assert train["losses_finite"] and train["iterations"] == 2 and train["checkpoint_final"]
    assert train["activation_checkpointing"].startswith('Activation checkpointing: off ("auto"')  # the CPU
    assert summary["results"]["nnunet-predict.json"]["all_predicted"]
