"""Bad input through the real command line: one line naming what to change and exit 2, never a traceback; nothing
silently wrong; nothing half-written; messages that say what is true; no noise. One test per kind (issue 23); the
generated inputs are in ``test_cli_properties.py``. Commands that need no torch run as the console script in a
subprocess (under a second each); those that import torch or nnU-Net run through ``main`` in this process (the
same parser and error handling, without a torch import per call). Nothing trains or loads a model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CLI_COMMAND, run_cli
from PIL import Image

from nnunet_sparseattn.cli import main


def cli(*args: object, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The CLI with ``env`` added to this environment."""
    return run_cli(*args, env=dict(os.environ, **(env or {})), **kwargs)


def run_main(*args: object) -> subprocess.CompletedProcess:
    """``main`` in this process, its output captured as a subprocess's would be."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def refused(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one line on stderr (ours), no traceback, nothing on stdout's tail that looks like one."""
    err = result.stderr
    assert result.returncode == 2, result.stdout + err
    assert err.startswith("nnunet-sparseattn: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + result.stdout and "Warning" not in err
    for text in expected:
        assert text in err, err
    return err


def _pairs(root: Path, n: int = 6, size=(40, 48), mask_value: int = 255, dtype=np.uint8) -> tuple[Path, Path]:
    images, masks = root / "src" / "images", root / "src" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"c{i}.png")
        mask = np.zeros(size, dtype)
        mask[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = mask_value
        Image.fromarray(mask).save(masks / f"c{i}.png")
    return images, masks


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(folder))
    return folder


@pytest.fixture
def scored(tmp_path, raw) -> tuple[Path, Path]:
    """A converted dataset's labelsTr and a prediction folder as nnUNetv2_predict writes it (labels, dataset.json)."""
    images, masks = _pairs(tmp_path)
    assert cli("convert-2d", images, masks, "-d", 1, "--name", "T").returncode == 0
    dataset = raw / "Dataset001_T"
    predictions = tmp_path / "predictions"
    shutil.copytree(dataset / "labelsTr", predictions)
    shutil.copy(dataset / "dataset.json", predictions)
    return dataset / "labelsTr", predictions


def _written(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".", "summary", "paper")))


# ------------------------------------------------------------------------------------ tracebacks -> one line
def test_library_and_file_system_failures_are_one_line(tmp_path, scored):
    reference, predictions = scored
    broken = tmp_path / "broken"
    shutil.copytree(predictions, broken)
    (broken / "c3.png").write_bytes(b"")  # a 0-byte PNG: SimpleITK's 65-line traceback before
    err = refused(
        run_main("evaluate", reference, predictions, broken, "-np", 1),
        f"cannot read prediction {broken}/c3.png",
        "it is empty: 0 bytes",
    )
    assert "sitk::ERROR" in err  # the reader's last word, in the same line
    # the folder scored before the broken one keeps nothing of this run: all folders or none
    assert _written(predictions) == [] and _written(broken) == [] and not (tmp_path / "paper_table.md").exists()
    (broken / "c3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # truncated
    refused(run_main("evaluate", reference, broken), f"cannot read prediction {broken}/c3.png")

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    refused(cli("export", "-d", 1, "-c", "2d", "-o", tmp_path), f"-o {tmp_path} is a folder")
    refused(run_main("explain", "-m", tmp_path, "-i", "x.png", "-o", a_file), f"-o {a_file} is a file")
    refused(
        run_main("explain", "-m", tmp_path, "-i", "x.png", "-o", tmp_path / "o", "-device", "tpu"),
        "-device 'tpu' is no device here",
    )
    refused(cli("convert-2d", "a", "b", "-d", 2, env={"nnUNet_raw": str(a_file)}), f"nnUNet_raw {a_file} is a file")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    refused(
        run_main("explain", "-m", tmp_path, "-i", "x.png", "-o", tmp_path / "o", "-device", "cuda"),
        "-device cuda, and no CUDA GPU is visible",
    )
    assert not (tmp_path / "o").exists()


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, raw):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    images, masks = _pairs(tmp_path)
    raw.chmod(0o500)
    try:
        refused(cli("convert-2d", images, masks, "-d", 3), f"{raw} is not writable by you")
    finally:
        raw.chmod(0o700)


# --------------------------------------------------------------------------------- nothing silently wrong
def test_inputs_that_cannot_be_meant_are_refused(tmp_path, raw, scored):
    reference, predictions = scored
    images = reference.parent / "imagesTr"
    refused(
        cli("convert-2d", images, images, "-d", 4, "--threshold", 127),
        "the images folder and the masks folder are the same",
    )
    copies = tmp_path / "copies"
    shutil.copytree(images, copies)
    refused(cli("convert-2d", images, copies, "-d", 4, "--threshold", 127), "is a copy of its image")
    refused(cli("convert-2d", images, reference, "-d", 4, "--resize", "1x1"), "--resize '1x1': sides below 8 px")
    refused(cli("convert-2d", images, reference, "-d", 4, "--resize", "99999x99999"), "above Pillow's limit")
    # evaluate REF REF used to score 1.000 and write three files into the reference labels
    before = sorted(os.listdir(reference))
    refused(cli("evaluate", reference, reference), "is the reference folder")  # refused before nnU-Net's import
    refused(cli("evaluate", reference, str(reference) + "/"), "is the reference folder")
    nested = reference / "preds"
    shutil.copytree(predictions, nested)
    refused(cli("evaluate", reference, nested), "lies inside the reference folder")
    shutil.rmtree(nested)
    assert sorted(os.listdir(reference)) == before
    # labels dataset.json does not define: 0/255, or 2 in a binary task (Dice 0 beside mDSC 0.96 before)
    for value, hint in ((255, "a 0/255 mask?"), (2, "")):
        label = np.asarray(Image.open(predictions / "c0.png"))
        Image.fromarray((label * value).astype(np.uint8)).save(predictions / "c0.png")
        refused(
            run_main("evaluate", reference, predictions),
            f"holds label(s) {value} that dataset.json does not define",
            hint,
        )
        Image.fromarray(label).save(predictions / "c0.png")
    assert _written(predictions) == []


def test_suspicious_input_converts_with_one_warning_line(tmp_path, raw):
    images, masks = _pairs(tmp_path, size=(20, 24), mask_value=0)
    result = cli("convert-2d", images, masks, "-d", 5)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("nnunet-sparseattn: warning: ") for w in warnings)
    assert "all 6 masks are empty" in warnings[0] and "images as small as 20x24 px" in warnings[1]


def test_compare_refuses_an_empty_trainer_list(tmp_path):
    refused(
        cli("compare", "-d", 1, "-c", "2d", "-o", tmp_path / "o", "--trainers", ""), "--trainers '' names no trainer"
    )


# ------------------------------------------------------------------------------------ nothing half-written
def test_sigterm_leaves_no_partial_dataset(tmp_path, raw):
    images, masks = _pairs(tmp_path, n=400, size=(64, 64))
    process = subprocess.Popen(
        [*CLI_COMMAND, "convert-2d", str(images), str(masks), "-d", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = raw / ".Dataset006_src.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert partial.exists(), "the conversion finished before it could be stopped"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert list(raw.iterdir()) == []


def test_overwrite_replaces_the_dataset_whole_and_never_its_own_inputs(tmp_path, raw):
    images, masks = _pairs(tmp_path)
    assert cli("convert-2d", images, masks, "-d", 7, "--name", "A").returncode == 0
    dataset = raw / "Dataset007_A"
    # --overwrite with the dataset's own imagesTr as input would delete the input before reading it
    refused(
        cli("convert-2d", dataset / "imagesTr", masks, "-d", 7, "--name", "A", "--overwrite"),
        "--overwrite would delete the images folder",
    )
    assert cli("convert-2d", images, masks, "-d", 7, "--name", "A", "--overwrite", "--resize", "32x32").returncode == 0
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset007_A"]
    assert json.loads((dataset / "conversion.json").read_text())["resize"] == [32, 32]


# ------------------------------------------------------------------------------------ messages say what is true
def test_messages_say_what_is_true(tmp_path, raw, scored):
    reference, predictions = scored
    # a clean 16-bit 0/65535 mask is binary (was: "a lossily saved 0/255 mask")
    images, masks = _pairs(tmp_path / "deep", mask_value=65535, dtype=np.uint16)
    assert cli("convert-2d", images, masks, "-d", 8, "--name", "Deep").returncode == 0
    assert np.unique(np.asarray(Image.open(raw / "Dataset008_Deep" / "labelsTr" / "c0.png"))).tolist() == [0, 1]
    # --overwrite's refusal and its --help agree: it replaces a dataset of the same id AND name
    refused(
        cli("convert-2d", images, masks, "-d", 8, "--name", "Other", "--overwrite"),
        "taken by Dataset008_Deep, of another name than Dataset008_Other: --overwrite replaces only a dataset "
        "of the same id and name",
    )
    assert "replace the existing dataset of this id and name" in " ".join(cli("convert-2d", "--help").stdout.split())
    # an RGB prediction: the channels differ, not the shapes it used to show as equal
    Image.fromarray(np.stack([np.asarray(Image.open(predictions / "c1.png"))] * 3, -1)).save(predictions / "c1.png")
    refused(run_main("evaluate", reference, predictions), f"prediction {predictions}/c1.png has 3 channels")
    refused(cli("evaluate", reference, predictions / "c2.png"), "is a file, not a folder")
    refused(cli("info", "-d", 1), "info -d 1 needs -c CONFIGURATION too")
    refused(cli("info", "-c", "2d"), "-c 2d goes with -d ID")


# ------------------------------------------------------------------------------------------------ no noise
def test_no_warning_before_the_output_and_plain_help(tmp_path):
    # timm's torch.jit.interface FutureWarning (through nnU-Net's networks) preceded doctor's, explain's and
    # compare's output; explain imports them first of all
    result = cli("explain", "-m", tmp_path, "-i", "x.png", "-o", tmp_path, "-device", "tpu")
    assert (
        result.stderr == "nnunet-sparseattn: error: -device 'tpu' is no device here: choose cpu, cuda (or cuda:N) "
        "or mps\n"
    ), result.stderr
    top = cli("--help").stdout
    assert "`" not in top and "usage: nnunet-sparseattn" in top
    # the nnU-Net commands we start (the demo shows their output) ignore it too, keeping the user's own filters
    from nnunet_sparseattn.harness.commands import nnunet_environment

    env = nnunet_environment(
        tmp_path / "r", tmp_path / "p", tmp_path / "s", base=dict(os.environ, PYTHONWARNINGS="default")
    )
    assert env["PYTHONWARNINGS"].startswith("default,ignore:")
    warn = (
        "import warnings; "
        "warnings.warn('`torch.jit.interface` is deprecated. Please use `torch.compile`', FutureWarning)"
    )
    assert subprocess.run([sys.executable, "-c", warn], env=env, capture_output=True, text=True).stderr == ""


# ------------------------------------------------------------------------ found beyond the examples
def test_more_inputs_that_used_to_mislead_or_run(tmp_path, raw, scored):
    reference, predictions = scored
    images, masks = tmp_path / "src" / "images", tmp_path / "src" / "masks"  # what the dataset was converted from
    binary = tmp_path / "list.txt"
    binary.write_bytes(bytes(range(128, 256)))
    refused(cli("convert-2d", images, masks, "-d", 9, "--test-list", tmp_path), f"test list {tmp_path} is a folder")
    refused(cli("convert-2d", images, masks, "-d", 9, "--test-list", binary), f"cannot read test list {binary}")
    refused(cli("convert-2d", binary, masks, "-d", 9), f"images folder {binary} is a file, not a folder")
    refused(
        cli("evaluate", reference, predictions, "--dataset-json", tmp_path / "nope.json"),
        "--dataset-json",
        "is no file",
    )
    # these used to write a dataset with numTraining -1, and to start the demo's training
    refused(cli("make-demo-dataset", "--raw", raw, "--num-training", "-1"), "--num-training -1")
    refused(cli("make-demo-dataset", "--raw", binary), f"the nnUNet_raw folder {binary} is a file")
    refused(cli("demo", "--num-heldout", "0", "--work", tmp_path / "w"), "--num-heldout 0")
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset001_T"] and not (tmp_path / "w").exists()
    # predictions of another dataset: their dataset.json's labels differ from the reference dataset's
    meta = json.loads((predictions / "dataset.json").read_text())
    (predictions / "dataset.json").write_text(json.dumps(dict(meta, labels={"background": 0, "liver": 1, "tumour": 2})))
    refused(run_main("evaluate", reference, predictions), "define different labels", "pass --dataset-json")


def test_plan_refuses_a_broken_plans_file_and_an_empty_setting(tmp_path, monkeypatch):
    pre = tmp_path / "pre" / "Dataset999_X"
    pre.mkdir(parents=True)
    (pre / "broken.json").write_text("{broken")
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    refused(cli("plan", "-d", 999, "--variant", "bsa", "--plans", "broken"), f"cannot read JSON file {pre}/broken.json")
    refused(cli("plan", "-d", 999, "--variant", "bsa", "--set", "=3"), "--set '=3': expected KEY=VALUE")


def test_info_names_the_option_of_an_unknown_paper_network():
    refused(run_main("info", "--variant", "nope"), "info --variant 'nope': no such paper-scale network; choose one of")


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """``plan`` writes its plans file through ``outputs.write_text_whole``: a failure before the rename leaves the
    old file as it was and no hidden leftover."""
    from nnunet_sparseattn import outputs

    target = tmp_path / "nnUNetPlans_BSA.json"
    target.write_text("old")
    assert outputs.write_text_whole(target, "new") == target and target.read_text() == "new"

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_text_whole(target, "half")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


@pytest.mark.parametrize(
    "option,value,words",
    [("--limit", 0, "--limit 0: the number of pairs"), ("--num-test", -1, "--num-test -1: the number of test cases")],
)
def test_counts_out_of_range_name_their_option(tmp_path, raw, option, value, words):
    images, masks = _pairs(tmp_path)
    refused(run_main("convert-2d", images, masks, "-d", 3, option, value), words)
    assert not any(raw.iterdir())
