"""Train/test splits of the learning-curve benchmark's three datasets, written as name lists (never the data).

    .venv/bin/python -m benchmarks.splits [--data ../shared/data] [--out benchmarks/splits]

writes one test list per dataset into ``benchmarks/splits/`` (committed; the benchmark reads them, and a test checks
that this command reproduces them from the data):

- ``cvc_clinicdb_test.txt``: CVC-ClinicDB frames (``N.jpg``) held out, split BY VIDEO SEQUENCE: the 29 sequences
  of the dataset's ``README.txt`` (:data:`CVC_SEQUENCES`) in a seeded random order, whole sequences moved to the
  test side until it holds at least :data:`MIN_TEST` ``["cvc"]`` frames. Neighbouring frames of one sequence are near
  duplicates: a frame-wise split would score memory.
- ``isic2017_test.txt``: ISIC 2017 images (``ISIC_XXXXXXX.jpg``): a seeded random sample of
  :data:`MIN_TEST` ``["isic2017"]`` of the 2000 (the copy holds the challenge's training set only).
- ``hippocampus_test.txt``: MSD Hippocampus training cases (``hippocampus_XXX``), split by patient: the MSD task
  holds one scan per subject, so a case is a patient; a seeded random sample of :data:`MIN_TEST` ``["hippocampus"]``.

Every list is sorted; the seed is :data:`SEED`. The rest of each dataset is the training side (nnU-Net's fold 0
of its own 5-fold split of it trains; the test cases are never seen in training or validation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from benchmarks.common import DATA, ROOT

SPLITS = ROOT / "benchmarks" / "splits"
SEED = 2026
MIN_TEST = {"cvc": 120, "isic2017": 300, "hippocampus": 52}
# CVC-ClinicDB's README.txt: the first frame of each of its 29 sequences (sequence i: FIRST[i-1] .. FIRST[i] - 1).
_CVC_FIRST = (
    1,
    26,
    51,
    68,
    79,
    104,
    127,
    152,
    178,
    200,
    206,
    228,
    253,
    278,
    298,
    318,
    343,
    364,
    384,
    409,
    429,
    448,
    467,
    479,
    504,
    529,
    547,
    572,
    592,
    613,
)
CVC_SEQUENCES: dict[int, range] = {i + 1: range(a, b) for i, (a, b) in enumerate(zip(_CVC_FIRST, _CVC_FIRST[1:]))}
LIST_FILES = {"cvc": "cvc_clinicdb_test.txt", "isic2017": "isic2017_test.txt", "hippocampus": "hippocampus_test.txt"}


def cvc_sequence(frame: int) -> int:
    """The video sequence (1..29) of CVC-ClinicDB frame number ``frame`` (its README's table)."""
    for sequence, frames in CVC_SEQUENCES.items():
        if frame in frames:
            return sequence
    raise ValueError(f"CVC-ClinicDB has no frame {frame} (frames 1..612)")


def _names(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    from nnunet_sparseattn.errors import UserError

    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: pass --data with the folder that holds the shared datasets")
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(suffixes) and not p.name.startswith("."))


def cvc_test_frames(images: Path, minimum: int = MIN_TEST["cvc"], seed: int = SEED) -> list[str]:
    """Test frames (file names) of CVC-ClinicDB: whole sequences, in a seeded random order, until >= ``minimum``."""
    import numpy as np

    present: dict[int, list[str]] = {}
    for name in _names(images, (".jpg", ".png", ".tif", ".tiff")):
        present.setdefault(cvc_sequence(int(Path(name).stem)), []).append(name)
    test: list[str] = []
    for sequence in np.random.default_rng(seed).permutation(sorted(present)):
        if len(test) >= minimum:
            break
        test += present[int(sequence)]
    return sorted(test, key=lambda n: int(Path(n).stem))


def sample(names: list[str], count: int, seed: int = SEED) -> list[str]:
    """``count`` of ``names`` drawn without replacement by a seeded generator, sorted."""
    import numpy as np

    picked = np.random.default_rng(seed).choice(len(names), size=count, replace=False)
    return sorted(names[int(i)] for i in picked)


def isic_test_images(images: Path, count: int = MIN_TEST["isic2017"], seed: int = SEED) -> list[str]:
    return sample(_names(images, (".jpg", ".png")), count, seed)


def hippocampus_test_cases(task: Path, count: int = MIN_TEST["hippocampus"], seed: int = SEED) -> list[str]:
    """Case identifiers (``hippocampus_XXX``) of the MSD task's labelled cases held out."""
    cases = [n.removesuffix(".nii.gz") for n in _names(task / "labelsTr", (".nii.gz",))]
    return sample(cases, count, seed)


def make_lists(data: Path = DATA) -> dict[str, list[str]]:
    """Every dataset's test list, from the data (see the module's docstring)."""
    return {
        "cvc": cvc_test_frames(data / "CVC-ClinicDB" / "images"),
        "isic2017": isic_test_images(data / "ISIC2017_256" / "images"),
        "hippocampus": hippocampus_test_cases(data / "Task04_Hippocampus"),
    }


def read_list(key: str, folder: Path = SPLITS) -> list[str]:
    from nnunet_sparseattn.errors import UserError

    path = Path(folder) / LIST_FILES[key]
    if not path.is_file():
        raise UserError(f"{path} does not exist: write the splits with python -m benchmarks.splits")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def write_lists(lists: dict[str, list[str]], folder: Path = SPLITS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, names in lists.items():
        head = f"# test side of {key}: {len(names)} names; written by python -m benchmarks.splits (seed {SEED})\n"
        (folder / LIST_FILES[key]).write_text(head + "\n".join(names) + "\n")


def hold_out_cases(dataset: Path, cases: list[str]) -> None:
    """Move ``cases`` of an nnU-Net raw dataset from imagesTr/labelsTr to imagesTs/labelsTs (what compare predicts
    and scores as a test set). An existing imagesTs without labels (MSD's unlabelled test images) is removed first:
    only labelled cases can be scored. Cases already moved are left (a run killed half-way is finished); a case on
    neither side is refused in one line, before anything moves."""
    from nnunet_sparseattn.errors import UserError

    meta = json.loads((dataset / "dataset.json").read_text())
    ending = meta["file_ending"]
    moved = {c for c in cases if (dataset / "labelsTs" / f"{c}{ending}").is_file()}
    missing = [c for c in cases if c not in moved and not (dataset / "labelsTr" / f"{c}{ending}").is_file()]
    if missing:
        raise UserError(f"{len(missing)} test case(s) are not training cases of {dataset} (e.g. {missing[0]})")
    if not (dataset / "labelsTs").is_dir():
        shutil.rmtree(dataset / "imagesTs", ignore_errors=True)
    for split in ("imagesTs", "labelsTs"):
        (dataset / split).mkdir(exist_ok=True)
    for case in cases:
        for image in sorted((dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")):
            image.rename(dataset / "imagesTs" / image.name)
        if case not in moved:  # the label last: a case counts as moved once its label is
            (dataset / "labelsTr" / f"{case}{ending}").rename(dataset / "labelsTs" / f"{case}{ending}")
    meta["numTraining"] = len(list((dataset / "labelsTr").glob(f"*{ending}")))
    (dataset / "dataset.json").write_text(json.dumps(meta, indent=2))


def main(argv: list[str] | None = None) -> int:
    from nnunet_sparseattn.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    ap.add_argument("--out", type=Path, default=SPLITS, help=f"where the lists go (default {SPLITS})")
    args = ap.parse_args(argv)
    try:
        lists = make_lists(args.data)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_lists(lists, args.out)
    for key, names in lists.items():
        print(f"{key}: {len(names)} test names -> {args.out / LIST_FILES[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
