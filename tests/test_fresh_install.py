"""Install and go: the built wheel in fresh virtual environments, nnU-Net's own commands with ``nnUNet_extTrainer``
unset, a model exported on one side and predicted with on the other through the container recipe
(``docker/Dockerfile``), the opt-out and the version refusal.

What is fresh and what is shared (a full install copies ~5.5 GB of torch and CUDA libraries per venv, several
minutes; docs/installation.md gives the measured cost): each venv here is made by ``python -m venv`` (no system or
development site-packages) and gets, from pip, the wheel built from this checkout, nnU-Net (with its console scripts)
and our console script and startup ``.pth`` file. Every OTHER package (torch, numpy, SimpleITK, ...) comes from one
read-only folder of links to the development venv's packages, put on the venv's sys.path by a path ``.pth`` file;
that folder holds no nnU-Net, no nnunet-sparseattn and none of the development venv's ``.pth`` files.

Python: the venvs are made from the development venv's Python (3.11 here), and, where
``NNUNET_SPARSEATTN_TEST_PY312_VENV`` names a Python 3.12 venv with our dependencies installed (``make test-py312``
makes one: a full install, minutes), from that one too, sharing ITS packages the same way. Containers and GPU
machines run 3.12 (nnU-Net issue 3025 reports trainer-lookup trouble there).

Slow: CI runs it (the 3.12 run only where that venv is given). Data: the ISIC 2017 fixture of ``conftest.py`` (20
training cases, 2 held out), planned once, and its ``_debug`` BSA model, trained once per run by the development
venv's ``nnUNetv2_train`` (the explain test shares it); the trainer-side venv finds the best configuration and
exports a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nnunet_sparseattn_autodiscovery as autodiscovery
from nnunet_sparseattn.model_stamp import STAMP_KEY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAINER = "nnUNetTrainerBSA_debug"
# the development venv's entries that a fresh install must bring itself
NOT_SHARED = re.compile(r"^(nnunetv2|nnunet_sparseattn|__editable__|_editable_impl_|pip\b|pip-|__pycache__)|\.pth$")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], check=True)
    [built] = dist.glob("nnunet_sparseattn-*.whl")
    return built


PY312_VENV = os.environ.get("NNUNET_SPARSEATTN_TEST_PY312_VENV")
PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


@pytest.fixture(scope="module", params=["development venv's Python", "Python 3.12"])
def base_python(request) -> Path:
    """The Python the fresh venvs are made from; its own venv provides the shared third-party packages."""
    if request.param == "Python 3.12":
        if not PY312_VENV:
            pytest.skip(
                "the Python 3.12 run needs NNUNET_SPARSEATTN_TEST_PY312_VENV: a 3.12 venv with our "
                "dependencies (make test-py312 makes one and runs this file with it)"
            )
        python = Path(PY312_VENV) / "bin" / "python"
        version = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert version == "(3, 12)", f"{python} is Python {version}"
        return python
    return Path(sys.executable)


@pytest.fixture(scope="module")
def shared_packages(base_python, tmp_path_factory) -> Path:
    """Links to the base venv's packages, minus nnU-Net, ours and every .pth file (see the module docstring)."""
    purelib = subprocess.run([base_python, "-c", PURELIB], capture_output=True, text=True, check=True).stdout.strip()
    folder = tmp_path_factory.mktemp("shared-site-packages")
    for entry in Path(purelib).iterdir():
        if not NOT_SHARED.search(entry.name):
            (folder / entry.name).symlink_to(entry)
    return folder


class FreshVenv:
    def __init__(self, root: Path, base_python: Path, shared: Path):
        subprocess.run([base_python, "-m", "venv", "--symlinks", root], check=True)
        self.root = root
        self.bin = root / "bin"
        self.python = self.bin / "python"
        self.site_packages = Path(self.run(["python", "-c", PURELIB], {}).stdout.strip())
        (self.site_packages / "_shared_test_packages.pth").write_text(f"{shared}\n")

    def env(self, **extra: str) -> dict[str, str]:
        """This machine's environment as a user's shell would have it: this venv's bin first on PATH and nothing of
        the development session (no PYTHONPATH, no nnUNet_extTrainer, no opt-out)."""
        drop = ("PYTHONPATH", "VIRTUAL_ENV", autodiscovery.EXT_TRAINER_VARIABLE, autodiscovery.OPT_OUT_VARIABLE)
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(
            PATH=os.pathsep.join([str(self.bin), "/usr/local/bin", "/usr/bin", "/bin"]),
            nnUNet_compile="f",
            nnUNet_def_n_proc="2",
            nnUNet_n_proc_DA="0",
            PYTHONUNBUFFERED="1",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )
        env.update(extra)
        return env

    def run(
        self, args: list[str], env: dict[str, str] | None, check: bool = True, **kwargs
    ) -> subprocess.CompletedProcess:
        env = self.env() if env is None else {**self.env(), **env}
        command = [str(self.bin / args[0]) if (self.bin / args[0]).exists() else args[0], *map(str, args[1:])]
        # from the venv's folder, not this checkout (python -c would import the checkout's package from the cwd)
        kwargs.setdefault("cwd", self.root)
        result = subprocess.run(command, env=env, capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result


@pytest.fixture(scope="module")
def trainer_side(tmp_path_factory, wheel, base_python, shared_packages) -> FreshVenv:
    env = FreshVenv(tmp_path_factory.mktemp("trainer-side") / "venv", base_python, shared_packages)
    env.run(["pip", "install", "-q", wheel], None)
    return env


def test_the_wheel_installs_the_hook_and_doctor_names_its_file(trainer_side):
    pth = trainer_side.site_packages / autodiscovery.PTH_NAME
    assert pth.is_file() and (trainer_side.site_packages / "nnunet_sparseattn_autodiscovery.py").is_file()
    doctor = trainer_side.run(["nnunet-sparseattn", "doctor"], None, check=False).stdout
    assert f"ok   trainers: the startup hook {pth} added our trainers to nnUNet_extTrainer" in doctor
    assert "ok   nnU-Net finds nnUNetTrainerBSA in nnunet_sparseattn" in doctor


LOOKUP = """
import json, os, nnunet_sparseattn, nnunetv2, torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunet_sparseattn.discovery import describe_mechanism
out = {m.__name__: m.__file__ for m in (nnunet_sparseattn, nnunetv2, torch)}
out["variable"] = os.environ.get("nnUNet_extTrainer")
try:
    out["found"] = recursive_find_trainer_class_by_name("nnUNetTrainerBSA").__module__
except RuntimeError as error:
    out["found"] = str(error)[:60]
out["mechanism"] = describe_mechanism().how
print(json.dumps(out))
"""


def _lookup(env: FreshVenv, **variables: str) -> dict[str, str]:
    return json.loads(env.run(["python", "-c", LOOKUP], variables).stdout.splitlines()[-1])


def test_nnunet_finds_our_trainers_with_nothing_set_and_the_opt_out_turns_that_off(trainer_side):
    shim = trainer_side.site_packages / "nnunet_sparseattn" / "ext_trainers"
    found = _lookup(trainer_side)
    assert found["found"] == "nnunet_sparseattn.trainers.bsa" and found["variable"] == str(shim)
    # the wheel's copies of ours and nnU-Net's, the shared torch (as the module docstring says)
    assert Path(found["nnunet_sparseattn"]).is_relative_to(trainer_side.site_packages)
    assert Path(found["nnunetv2"]).is_relative_to(trainer_side.site_packages)
    assert not Path(found["torch"]).is_relative_to(trainer_side.root)
    off = _lookup(trainer_side, **{autodiscovery.OPT_OUT_VARIABLE: "1"})
    assert off["found"] == "Could not find requested nnunet trainer nnUNetTrainerBSA in "
    assert off["variable"] is None
    assert off["mechanism"].startswith("nnUNet_extTrainer is not set and autodiscovery is off")
    mine = str(trainer_side.root / "my_trainers")  # the user's own folder is kept, first
    out = trainer_side.run(
        ["python", "-c", "import os; print(os.environ['nnUNet_extTrainer'])"],
        {autodiscovery.EXT_TRAINER_VARIABLE: mine},
    ).stdout.strip()
    assert out == os.pathsep.join([mine, str(shim)])


@pytest.fixture(scope="module")
def exported(trainer_side, isic_nnunet, trained_debug_model, tmp_path_factory) -> dict:
    """nnUNetv2_find_best_configuration and our export, in the trainer-side venv with nnUNet_extTrainer unset, on a
    copy of the run's shared _debug model (trained once by ``nnUNetv2_train`` for this test and the explain test;
    nnU-Net's trainer lookup with nothing set is what the receiving venv's nnUNetv2_predict exercises); the
    preprocessed data is the shared fixture's, the results folder this test's."""
    work = tmp_path_factory.mktemp("trainer-side-work")
    paths = {
        "nnUNet_raw": isic_nnunet["env"]["nnUNet_raw"],
        "nnUNet_preprocessed": isic_nnunet["env"]["nnUNet_preprocessed"],
        "nnUNet_results": str(work / "nnUNet_results"),
    }
    model = trained_debug_model(isic_nnunet, TRAINER)
    shutil.copytree(model, Path(paths["nnUNet_results"]) / model.parent.name / model.name)
    dataset = str(isic_nnunet["id"])
    trainer_side.run(
        ["nnUNetv2_find_best_configuration", dataset, "-c", "2d", "-tr", TRAINER, "-f", "0", "-np", "1"], paths
    )
    zip_path = work / "model.zip"
    printed = trainer_side.run(
        ["nnunet-sparseattn", "export", "-d", dataset, "-c", "2d", "-tr", TRAINER, "-f", "0", "-o", zip_path], paths
    ).stdout
    assert printed.startswith(f"{zip_path}: Dataset{isic_nnunet['id']:03d}_")
    return {"zip": zip_path, "paths": paths, "dataset": dataset, "run": isic_nnunet}


def test_find_best_configuration_wrote_its_instructions_with_nothing_set(exported):
    results = next(Path(exported["paths"]["nnUNet_results"]).glob("Dataset*"))
    assert TRAINER in (results / "inference_instructions.txt").read_text()


def _dockerfile_steps(path: Path) -> list[tuple[str, ...]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_the_container_recipe_installs_the_zip_and_predicts_then_refuses_a_newer_model(
    exported, wheel, base_python, shared_packages, tmp_path
):
    """docker/Dockerfile's steps, run by hand in a fresh venv as the image's Python: its ARGs (torch comes from the
    shared packages, so TORCH_INDEX is empty; NNUNET_SPARSEATTN is the wheel), its ENV, its RUN commands through sh,
    its COPY, then its ENTRYPOINT with the arguments `docker run IMAGE ARGS` would give. The container's /opt,
    /input and /output are folders under tmp_path."""
    receiving = FreshVenv(tmp_path / "venv", base_python, shared_packages)
    container = {"/opt/": f"{tmp_path}/opt/", "/input": str(exported["run"]["images"]), "/output": f"{tmp_path}/output"}
    (tmp_path / "opt").mkdir()

    def inside(text: str) -> str:
        for path, here in container.items():
            text = text.replace(path, here)
        return text

    args = {"TORCH_INDEX": "", "NNUNET_SPARSEATTN": str(wheel), "DEVICE": "cpu"}
    env: dict[str, str] = {}
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(exported["zip"], context / "model.zip")  # `nnunet-sparseattn export -o docker/model.zip`
    entrypoint = None
    steps = _dockerfile_steps(ROOT / "docker" / "Dockerfile")
    assert [s for s, _ in steps][:2] == ["ARG", "FROM"] and "python:3.12" in steps[0][1]  # the CPU base, named
    for instruction, rest in steps:
        if instruction == "ARG":
            name = rest.split("=", 1)[0]
            assert name in args or name == "BASE", f"the test does not know the recipe's ARG {name}"
        elif instruction == "ENV":
            for name, value in (pair.split("=", 1) for pair in shlex.split(rest)):
                env[name] = inside(re.sub(r"\$\{(\w+)\}", lambda m: {**args, **env}.get(m.group(1), ""), value))
        elif instruction == "RUN":
            receiving.run(["/bin/sh", "-c", inside(rest)], {**args, **env})
        elif instruction == "COPY":
            source, target = rest.split()
            shutil.copy(context / source, inside(target))
        elif instruction == "ENTRYPOINT":
            entrypoint = [inside(a) for a in json.loads(rest)]
        else:
            assert instruction in ("FROM", "CMD"), instruction
    assert not (tmp_path / "opt" / "model.zip").exists()  # installed, then removed, as in the image
    model = next((tmp_path / "opt" / "nnUNet_results").glob("Dataset*")) / f"{TRAINER}__nnUNetPlans__2d"
    plans = json.loads((model / "plans.json").read_text())
    assert set(plans[STAMP_KEY]) == {"version"}

    run_args = [
        "-d",
        exported["dataset"],
        "-c",
        "2d",
        "-tr",
        TRAINER,
        "-f",
        "0",
        "--disable_tta",
        "-npp",
        "1",
        "-nps",
        "1",
    ]
    receiving.run(entrypoint + run_args, env)  # nnUNet_extTrainer unset, as in the container
    predicted = sorted(p.name for p in (tmp_path / "output").glob("*.png"))
    assert predicted == sorted(p.name.replace("_0000.png", ".png") for p in exported["run"]["images"].glob("*.png"))

    plans[STAMP_KEY]["version"] = "99.0"
    (model / "plans.json").write_text(json.dumps(plans))
    refused = receiving.run(entrypoint + run_args, env, check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"nnunet-sparseattn: error: this model needs nnunet-sparseattn >= 99.0 (installed: {wheel.name.split('-')[1]}):"
        " pip install -U nnunet-sparseattn"
    )
    assert "Traceback" not in refused.stderr


def test_an_editable_install_runs_the_hook_from_the_checkout(tmp_path):
    """``pip install -e``: hatchling's editable wheel puts the checkout on sys.path and our .pth beside it. No
    dependencies are needed for the hook itself (--no-deps), so this venv shares nothing."""
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "-e", str(ROOT)],
        check=True,
    )
    site = Path(subprocess.run([python, "-c", PURELIB], capture_output=True, text=True, check=True).stdout.strip())
    assert (site / autodiscovery.PTH_NAME).is_file()
    assert not (site / "nnunet_sparseattn_autodiscovery.py").exists()  # the checkout's module runs, not a copy
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", autodiscovery.EXT_TRAINER_VARIABLE)}
    code = (
        "import os, nnunet_sparseattn_autodiscovery as hook; "
        "print(hook.__file__, hook.startup_outcome, os.environ['nnUNet_extTrainer'])"
    )
    out = subprocess.run(
        [python, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        str(ROOT / "nnunet_sparseattn_autodiscovery.py"),
        autodiscovery.ADDED,
        str(ROOT / "nnunet_sparseattn" / "ext_trainers"),
    ]
