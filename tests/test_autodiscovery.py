"""The startup hook (``nnunet_sparseattn_autodiscovery``), the installed file it comes in, and what ``doctor`` and
the one-line errors say about it. The hook in a real installed environment: ``tests/test_fresh_install.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import nnunet_sparseattn_autodiscovery as autodiscovery
from nnunet_sparseattn.discovery import (
    describe_mechanism,
    environment_for_nnunet_commands,
    ext_trainer_path,
    require_trainer,
)
from nnunet_sparseattn.doctor import check_ext_trainer
from nnunet_sparseattn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
OURS = autodiscovery.shim_folder()


def test_the_shim_folder_is_the_one_discovery_names():
    assert Path(OURS).resolve() == ext_trainer_path()
    assert (ext_trainer_path() / "nnunet_sparseattn_shim.py").is_file()


@pytest.mark.parametrize(
    "before, after",
    [
        ({}, OURS),
        ({"nnUNet_extTrainer": ""}, OURS),
        ({"nnUNet_extTrainer": "/mine"}, os.pathsep.join(["/mine", OURS])),  # the user's folders stay first
        ({"nnUNet_extTrainer": os.pathsep.join(["/a", "/b"])}, os.pathsep.join(["/a", "/b", OURS])),
    ],
)
def test_the_hook_appends_our_folder_and_keeps_the_users(before, after):
    environ = dict(before)
    assert autodiscovery.add_shim_folder(environ) == autodiscovery.ADDED
    assert environ["nnUNet_extTrainer"] == after
    assert autodiscovery.add_shim_folder(environ) == autodiscovery.ALREADY_LISTED  # never twice
    assert environ["nnUNet_extTrainer"] == after


def test_the_hook_recognises_our_folder_spelled_otherwise(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(OURS)
    for value in (OURS + os.sep, str(link), os.pathsep.join(["/mine", f" {OURS} "])):
        environ = {"nnUNet_extTrainer": value}
        assert autodiscovery.add_shim_folder(environ) == autodiscovery.ALREADY_LISTED
        assert environ["nnUNet_extTrainer"] == value


@pytest.mark.parametrize(
    "value, off", [("1", True), ("true", True), ("T", True), ("yes", True), ("0", False), ("", False), ("false", False)]
)
def test_the_opt_out(value, off):
    environ = {"nnUNet_sparseattn_no_autodiscovery": value, "nnUNet_extTrainer": "/mine"}
    outcome = autodiscovery.add_shim_folder(environ)
    assert (outcome == autodiscovery.OPTED_OUT) is off
    assert (environ["nnUNet_extTrainer"] == "/mine") is off


def test_the_pth_file_is_one_import_line_that_calls_the_hook():
    lines = (ROOT / autodiscovery.PTH_NAME).read_text().splitlines()
    assert lines == ["import nnunet_sparseattn_autodiscovery; nnunet_sparseattn_autodiscovery.at_startup()"]


def test_the_build_ships_the_pth_and_the_hook_module_beside_the_package():
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"] == {autodiscovery.PTH_NAME: autodiscovery.PTH_NAME}  # site-packages' root
    assert set(wheel["only-include"]) == {"nnunet_sparseattn", "nnunet_sparseattn_autodiscovery.py"}


def test_the_hook_imports_nothing_but_os():
    # it runs in every Python process of the environment: no torch, no nnU-Net, not even our package
    code = (
        "import os, sys; before = set(sys.modules); import nnunet_sparseattn_autodiscovery; "
        "print(sorted(set(sys.modules) - before))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['nnunet_sparseattn_autodiscovery']"


def test_at_startup_keeps_the_first_outcome(monkeypatch):
    # Python 3.11's site may run a venv's .pth twice: the second run must not turn "added" into "already listed"
    monkeypatch.setattr(autodiscovery, "startup_outcome", None)
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    monkeypatch.delenv("nnUNet_sparseattn_no_autodiscovery", raising=False)
    autodiscovery.at_startup()
    autodiscovery.at_startup()
    assert autodiscovery.startup_outcome == autodiscovery.ADDED
    assert os.environ["nnUNet_extTrainer"] == OURS


PTH = Path("/venv/lib/python3.12/site-packages") / autodiscovery.PTH_NAME


@pytest.mark.parametrize(
    "environ, outcome, startup_file, active, words",
    [
        ({"nnUNet_extTrainer": OURS}, autodiscovery.ADDED, PTH, True, [f"the startup hook {PTH} added", "opt out"]),
        ({"nnUNet_extTrainer": OURS}, autodiscovery.ALREADY_LISTED, PTH, True, ["already listed", "set by hand"]),
        (
            {"nnUNet_extTrainer": OURS, "nnUNet_sparseattn_no_autodiscovery": "1"},
            autodiscovery.OPTED_OUT,
            PTH,
            True,
            ["set by hand", "autodiscovery is off: nnUNet_sparseattn_no_autodiscovery=1"],
        ),
        (
            {"nnUNet_sparseattn_no_autodiscovery": "1"},
            autodiscovery.OPTED_OUT,
            PTH,
            False,
            [
                "nnUNet_extTrainer is not set and autodiscovery is off",
                "export nnUNet_extTrainer=",
                "or unset nnUNet_sparseattn_no_autodiscovery",
            ],
        ),
        ({"nnUNet_extTrainer": OURS}, None, None, True, ["set by hand (no startup hook ran"]),
        ({}, None, PTH, False, [f"the startup hook {PTH} did not run", "export nnUNet_extTrainer="]),
        (
            {"nnUNet_extTrainer": "/mine"},
            None,
            None,
            False,
            ["nnUNet_extTrainer=/mine does not list our trainers", "no startup hook is installed", "pip install it"],
        ),
        ({}, autodiscovery.ADDED, PTH, False, ["changed after Python started", "export nnUNet_extTrainer="]),
    ],
)
def test_doctor_names_the_mechanism_and_its_file(environ, outcome, startup_file, active, words):
    mechanism = describe_mechanism(environ, outcome, startup_file)
    assert mechanism.active is active
    text = f"{mechanism.how}: {mechanism.fix}"
    for word in words:
        assert word in text
    assert "\n" not in text


def test_doctor_finding_for_the_running_interpreter(monkeypatch):
    monkeypatch.setattr(autodiscovery, "startup_outcome", autodiscovery.ADDED)
    [finding] = check_ext_trainer({"nnUNet_extTrainer": OURS})
    assert finding.status == "ok" and finding.message.startswith("trainers: the startup hook ")
    monkeypatch.setattr(autodiscovery, "startup_outcome", autodiscovery.OPTED_OUT)
    [finding] = check_ext_trainer({"nnUNet_sparseattn_no_autodiscovery": "1"})
    assert finding.status == "fix" and "autodiscovery is off" in finding.message


def test_a_trainer_lookup_without_any_mechanism_is_one_line(monkeypatch):
    monkeypatch.setattr(autodiscovery, "startup_outcome", autodiscovery.OPTED_OUT)
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    monkeypatch.setenv("nnUNet_sparseattn_no_autodiscovery", "1")
    with pytest.raises(
        UserError, match="nnU-Net cannot find nnUNetTrainerBSA: nnUNet_extTrainer is not set and autodiscovery is off"
    ) as error:
        require_trainer("nnUNetTrainerBSA")
    assert "\n" not in str(error.value)


def test_nnunet_commands_we_start_get_the_variable_as_the_user_had_it_where_the_hook_runs(monkeypatch):
    # their own interpreters run the hook: the demo and the end-to-end tests then run nnU-Net with it unset
    monkeypatch.setattr(autodiscovery, "startup_outcome", autodiscovery.ADDED)
    monkeypatch.setattr(autodiscovery, "value_before_startup", None)
    env = environment_for_nnunet_commands({"nnUNet_extTrainer": OURS, "nnUNet_raw": "/raw"})
    assert env == {"nnUNet_raw": "/raw"}
    monkeypatch.setattr(autodiscovery, "value_before_startup", "/mine")
    env = environment_for_nnunet_commands({"nnUNet_extTrainer": os.pathsep.join(["/mine", OURS])})
    assert env == {"nnUNet_extTrainer": "/mine"}
    # no hook ran here (a checkout on PYTHONPATH): the variable carries our folder, after the user's
    monkeypatch.setattr(autodiscovery, "startup_outcome", None)
    assert environment_for_nnunet_commands({}) == {"nnUNet_extTrainer": OURS}
    assert environment_for_nnunet_commands({"nnUNet_extTrainer": "/mine"}) == {
        "nnUNet_extTrainer": os.pathsep.join(["/mine", OURS])
    }
