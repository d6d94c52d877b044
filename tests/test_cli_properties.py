"""Generated bad (and good) input for ``convert-2d`` and ``evaluate`` (hypothesis): image sizes, PIL modes, bit depths,
label values, unreadable files and folder layouts. Whatever the input, the command converts it whole, or refuses it
in one line with exit 2 and leaves nothing behind; it never raises. Runs ``main`` in this process (the CLI's parser
and error handling; a subprocess per example would import everything again). Deterministic: derandomized."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from nnunet_sparseattn.cli import main

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _run(*args: object) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])  # an uncaught exception fails the test: that is the property
    return code, err.getvalue()


def _assert_refused(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("nnunet-sparseattn: error: ") and err.count("\n") == 1, err


def _save(path: Path, values: np.ndarray, mode: str) -> None:
    """``values`` (H, W) integers saved as a PIL ``mode`` image (colour modes repeat them over the channels)."""
    if mode == "I;16":
        Image.fromarray(values.astype(np.uint16)).save(path)
    elif mode == "1":
        Image.fromarray(values > 0).save(path)
    elif mode == "P":
        image = Image.frombytes("P", values.shape[::-1], np.clip(values, 0, 255).astype(np.uint8).tobytes())
        image.putpalette([v for i in range(256) for v in (i, (7 * i) % 256, 255 - i)])
        image.save(path)
    elif mode in ("RGB", "RGBA"):
        channels = [np.clip(values, 0, 255).astype(np.uint8)] * len(mode)
        Image.fromarray(np.stack(channels, -1), mode).save(path)
    elif mode == "LA":
        grey = np.clip(values, 0, 255).astype(np.uint8)
        Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(path)
    else:
        Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L").save(path)


SIDES = [8, 16, 24, 33, 40, 1, 3, 7]
IMAGE_MODES = ["L", "RGB", "RGBA", "P", "I;16", "1", "LA"]
MASK_MODES = ["L", "I;16", "RGB", "P", "1"]
MASK_VALUES = [(0, 1), (0, 255), (0, 65535), (0, 1, 2), (0,), (0, 2), (0, 128, 255), (0, 300), "noise"]
FILE_DEFECTS = ["empty file", "text file", "other size", "jpeg mask", "no mask", "orphan mask"]
BAD_OPTIONS = [
    ("--threshold", "-1"),
    ("--threshold", "255"),
    ("--threshold", "nan"),
    ("--resize", "1x1"),
    ("--resize", "0x5"),
    ("--resize", "abc"),
    ("--resize", "99999x99999"),
    ("--num-test", "-1"),
    ("--num-test", "3"),
    ("-d", "0"),
    ("-d", "1000"),
    ("same folder", ""),
]
GOOD_OPTIONS = [
    ("--threshold", "127"),
    ("--threshold", "0"),
    ("--resize", "8x8"),
    ("--resize", "32x24"),
    ("--num-test", "1"),
]


def _mostly(first: list, rest: list, share: int = 4) -> st.SearchStrategy:
    """One of ``first`` (``share`` times as likely as each of ``rest``)."""
    return st.sampled_from(first * share + rest)


@st.composite
def conversions(draw):
    """Cases that share their modes and label values (so that some convert), each possibly with its own odd mode,
    values or a file defect; options mostly valid, now and then one out of range."""
    image_mode, mask_mode = draw(st.sampled_from(IMAGE_MODES)), draw(st.sampled_from(MASK_MODES))
    values = draw(st.sampled_from(MASK_VALUES))
    side = draw(_mostly(SIDES[:5], SIDES[5:]))
    cases = []
    for _ in range(draw(_mostly([5, 6], [1, 7]))):
        cases.append(
            dict(
                size=(side, draw(_mostly(SIDES[:5], SIDES[5:]))),
                image_mode=draw(_mostly([image_mode], IMAGE_MODES, 12)),
                mask_mode=draw(_mostly([mask_mode], MASK_MODES, 12)),
                values=draw(_mostly([values], MASK_VALUES, 12)),
                defect=draw(_mostly(["none"], FILE_DEFECTS, 24)),
            )
        )
    options = draw(st.lists(_mostly([None], GOOD_OPTIONS + BAD_OPTIONS, 6), max_size=2))
    return cases, [o for o in options if o is not None], draw(st.integers(0, 2**16))


def _write_conversion_input(root: Path, cases: list[dict], seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for i, case in enumerate(cases):
        h, w = case["size"]
        _save(images / f"c{i}.png", rng.integers(0, 256, (h, w)), case["image_mode"])
        values = case["values"]
        labels = rng.integers(0, 256, (h, w)) if values == "noise" else rng.choice(np.array(values), (h, w))
        mask = masks / f"c{i}{'.jpg' if case['defect'] == 'jpeg mask' else '.png'}"
        if case["defect"] == "other size":
            labels = np.zeros((h + 1, w), int)
        if case["defect"] == "jpeg mask":
            Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8)).save(mask)
        elif case["defect"] != "no mask":
            _save(mask, labels, case["mask_mode"])
        if case["defect"] == "empty file":
            mask.write_bytes(b"")
        if case["defect"] == "text file":
            (images / f"c{i}.png").write_text("not an image")
        if case["defect"] == "orphan mask":
            _save(masks / f"orphan{i}.png", labels, "L")
    return images, masks


@settings(SETTINGS, max_examples=60)
@given(conversions())
def test_convert_2d_converts_whole_or_refuses_in_one_line_leaving_nothing(example):
    cases, options, seed = example
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, masks = _write_conversion_input(root, cases, seed)
        raw = root / "raw"
        raw.mkdir()
        same = ("same folder", "") in options
        args = ["convert-2d", images, images if same else masks, "-d", "5"]
        args += [x for option in options if option[0] != "same folder" for x in option]
        with mock.patch.dict(os.environ, {"nnUNet_raw": str(raw)}):
            code, err = _run(*args)
        left = sorted(p.name for p in raw.iterdir())
        event("converted" if code == 0 else re.sub(r"/\S+", "PATH", err)[26:110])
        if code != 0:
            _assert_refused(code, err)
            assert left == [], left
            return
        assert len(left) == 1 and left[0].startswith("Dataset"), left
        assert all(line.startswith("nnunet-sparseattn: warning: ") for line in err.splitlines()), err
        dataset = raw / left[0]
        meta = json.loads((dataset / "dataset.json").read_text())
        defined = set(meta["labels"].values())
        for label in (dataset / "labelsTr").glob("*.png"):
            values = np.asarray(Image.open(label))
            image = np.asarray(Image.open(dataset / "imagesTr" / f"{label.stem}_0000.png"))
            assert set(np.unique(values).tolist()) <= defined and values.shape == image.shape[:2]


# ------------------------------------------------------------------------------------------------- evaluate
REFERENCE_CASES = 4
REFUSING = ["label 2", "label 255", "rgb", "other size", "empty file", "garbage", "missing case", "extra case"]
ACCEPTED = ["none", "16-bit", "no dataset.json"]


@st.composite
def prediction_folders(draw):
    folders = [
        dict(defect=draw(st.sampled_from(REFUSING + ACCEPTED)), case=draw(st.integers(0, REFERENCE_CASES - 1)))
        for _ in range(draw(st.integers(1, 3)))
    ]
    layout = draw(st.sampled_from(["plain", "plain", "reference itself", "inside the reference", "a file", "twice"]))
    if layout == "plain" and all(f["defect"] in ACCEPTED for f in folders):
        folders[draw(st.integers(0, len(folders) - 1))]["defect"] = draw(st.sampled_from(REFUSING))
    return folders, layout, draw(st.sampled_from([(16, 20), (9, 9)]))


def _reference(root: Path, size: tuple[int, int]) -> Path:
    labels = root / "Dataset001_T" / "labelsTs"
    labels.mkdir(parents=True)
    (labels.parent / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "grey"},
                "labels": {"background": 0, "foreground": 1},
                "numTraining": 5,
                "file_ending": ".png",
                "overwrite_image_reader_writer": "NaturalImage2DIO",
            }
        )
    )
    for i in range(REFERENCE_CASES):
        mask = np.zeros(size, np.uint8)
        mask[2 : 2 + i + 2, 3 : 3 + i + 2] = 1
        Image.fromarray(mask).save(labels / f"c{i}.png")
    return labels


def _prediction(reference: Path, folder: Path, defect: str, case: int) -> None:
    folder.mkdir(parents=True)
    if defect != "no dataset.json":
        (folder / "dataset.json").write_text((reference.parent / "dataset.json").read_text())
    for i, label in enumerate(sorted(reference.glob("*.png"))):
        values = np.roll(np.asarray(Image.open(label)), 1, axis=1)
        target = folder / label.name
        if i != case or defect in ACCEPTED:
            Image.fromarray(values.astype(np.uint16) if defect == "16-bit" else values).save(target)
        elif defect in ("label 2", "label 255"):
            Image.fromarray(values * int(defect.split()[1])).save(target)
        elif defect == "rgb":
            Image.fromarray(np.stack([values * 255] * 3, -1)).save(target)
        elif defect == "other size":
            Image.fromarray(np.pad(values, ((0, 1), (0, 0)))).save(target)
        elif defect == "empty file":
            target.write_bytes(b"")
        elif defect == "garbage":
            target.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(50)))
        elif defect == "extra case":
            Image.fromarray(values).save(target)
            Image.fromarray(values).save(folder / "unknown.png")
        # "missing case": no file for this case


def _outputs(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith(("summary", "paper_table", ".original_size", ".paper_table"))
    )


@settings(SETTINGS, max_examples=30)
@given(prediction_folders())
def test_evaluate_refuses_in_one_line_and_scores_no_folder(example):
    folders, layout, size = example
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = _reference(root, size)
        paths = []
        for i, spec in enumerate(folders):
            _prediction(reference, root / "predictions" / f"p{i}", spec["defect"], spec["case"])
            paths.append(root / "predictions" / f"p{i}")
        if layout == "reference itself":
            paths.insert(1, reference)
        elif layout == "inside the reference":
            _prediction(reference, reference / "preds", "none", 0)
            paths.append(reference / "preds")
        elif layout == "a file":
            paths.append(reference / "c0.png")
        elif layout == "twice":
            paths.append(paths[0])
        before = sorted(p.name for p in reference.iterdir())
        code, err = _run("evaluate", reference, *paths, "-np", 1)
        event(re.sub(r"/\S+", "PATH", err)[26:100])
        _assert_refused(code, err)
        assert _outputs(root) == []
        assert sorted(p.name for p in reference.iterdir()) == before
