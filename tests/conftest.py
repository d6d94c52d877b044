from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.register_assert_rewrite("helpers")  # the end-to-end tests' shared checks report like test asserts

# The project's real data lives beside the checkout (never copied into it); CI has it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the project's shared data folder {SHARED_DATA} is absent (CI has it)")
    return SHARED_DATA


# Real data prepared ONCE per test session for every end-to-end test (NB, BSA, MDSA, bilateral, variants, compare):
# converting and preprocessing costs a minute per dataset on 2 cores. Tests add their own plans files and train their
# own trainers (separate result folders), so they do not disturb each other.
HIPPOCAMPUS_TRAINING_CASES = 15
HIPPOCAMPUS_HELDOUT_CASES = 3
ISIC_ID = 517
ISIC_TRAINING_CASES = 20
ISIC_HELDOUT_CASES = 2


@pytest.fixture(scope="session")
def hippocampus_nnunet(shared_data, tmp_path_factory) -> dict:
    """MSD Hippocampus through nnUNetv2_convert_MSD_dataset: 15 training cases planned and preprocessed for
    3d_fullres, and 3 further cases training never sees (``images``/``labels`` folders) for prediction."""
    from nnunet_sparseattn.harness import commands, datasets

    work = tmp_path_factory.mktemp("hippocampus")
    env = commands.work_environment(work)
    log = work / "nnunet.log"
    dataset_id = datasets.convert_msd(shared_data / "Task04_Hippocampus", env, log)
    dataset = datasets.dataset_folder(Path(env["nnUNet_raw"]), dataset_id)
    cases = datasets.labelled_cases(dataset / "labelsTr", ".nii.gz")
    heldout = cases[HIPPOCAMPUS_TRAINING_CASES:HIPPOCAMPUS_TRAINING_CASES + HIPPOCAMPUS_HELDOUT_CASES]
    images, labels = work / "heldout_images", work / "heldout_labels"
    training = datasets.HeldOut("training", dataset / "imagesTr", dataset / "labelsTr")
    datasets.copy_cases(heldout, training, images, labels, ".nii.gz")
    datasets.keep_training_cases(dataset, HIPPOCAMPUS_TRAINING_CASES)
    commands.plan_and_preprocess(dataset_id, "3d_fullres", env, log)
    return {"work": work, "env": env, "log": log, "id": dataset_id, "dataset": dataset, "images": images,
            "labels": labels, "heldout": heldout, "configuration": "3d_fullres"}


@pytest.fixture(scope="session")
def isic_nnunet(shared_data, tmp_path_factory) -> dict:
    """ISIC 2017 through ``convert_2d`` (20 training cases, 2 in imagesTs/labelsTs), planned and preprocessed 2d."""
    from nnunet_sparseattn.convert2d import convert_2d
    from nnunet_sparseattn.harness import commands

    work = tmp_path_factory.mktemp("isic2017")
    env = commands.work_environment(work)
    log = work / "nnunet.log"
    isic = shared_data / "ISIC2017_256"
    dataset = convert_2d(isic / "images", isic / "masks", ISIC_ID, raw_root=Path(env["nnUNet_raw"]),
                         limit=ISIC_TRAINING_CASES + ISIC_HELDOUT_CASES, num_test=ISIC_HELDOUT_CASES)
    commands.plan_and_preprocess(ISIC_ID, "2d", env, log)
    return {"work": work, "env": env, "log": log, "id": ISIC_ID, "dataset": dataset,
            "images": dataset / "imagesTs", "labels": dataset / "labelsTs", "configuration": "2d"}


@pytest.fixture
def trainer_without_data(tmp_path, monkeypatch):
    """``make(trainer_class, plans, configuration, dataset_json, initialize=True, device="cpu")``: a real nnU-Net
    trainer built from a plans dict and dataset.json, without a preprocessed dataset (``harness.trainers``): network,
    optimizer, schedule and loss as ``initialize`` makes them. nnU-Net's folders point into ``tmp_path`` for the
    test."""
    from nnunet_sparseattn.harness.commands import NNUNET_FOLDERS
    from nnunet_sparseattn.harness.trainers import trainer_without_data as build

    for name in NNUNET_FOLDERS:
        monkeypatch.setenv(name, str(tmp_path / name))

    def make(trainer_class: type, plans: dict, configuration: str, dataset_json: dict, initialize: bool = True,
             device: str = "cpu"):
        return build(trainer_class, plans, configuration, dataset_json, tmp_path, device=device,
                     initialize=initialize)

    return make


@pytest.fixture
def stock_trainer_step(trainer_without_data, monkeypatch):
    """``step(run, plans_name) -> (plans, network)``: nnU-Net's own ``nnUNetTrainer``, given a variant plans file of a
    prepared dataset (``hippocampus_nnunet``), builds the network it names and takes one finite training step, with
    ``nnUNet_extTrainer`` unset (the stock trainer needs only the installed package)."""
    import json

    import numpy as np

    def step(run: dict, plans_name: str):
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        from nnunet_sparseattn.harness.datasets import require_dataset

        monkeypatch.delenv("nnUNet_extTrainer", raising=False)
        preprocessed = require_dataset(run["env"]["nnUNet_preprocessed"], run["id"], "nnUNet_preprocessed")
        plans = json.loads((preprocessed / f"{plans_name}.json").read_text())
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        trainer = trainer_without_data(nnUNetTrainer, plans, run["configuration"], dataset_json)
        patch = trainer.configuration_manager.patch_size
        data = torch.randn(2, 1, *patch)
        targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])).float() for o in trainer.network(data)]
        assert np.isfinite(trainer.train_step({"data": data, "target": targets})["loss"])
        return plans, trainer.network

    return step
