from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytest.register_assert_rewrite("helpers")  # the end-to-end tests' shared checks report like test asserts

# nnU-Net's process pools (preprocessing, the final validation's export, ensembling) with one worker each: the two
# xdist workers already keep both cores busy, and every pool worker imports torch and nnU-Net afresh (seconds of CPU)
os.environ.setdefault("nnUNet_def_n_proc", "1")

# The project's real data lives beside the checkout (never copied into it); CI has it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the slow tests first: `make test`'s two workers take test modules in this order (--no-loadscope-reorder), so
    # the minutes-long end-to-end runs overlap each other and the quick tests fill the end
    items.sort(key=lambda item: "slow" not in item.keywords)
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


# Real data prepared ONCE per test run for every end-to-end test (NB, BSA, MDSA, bilateral, variants, compare,
# explain, export): converting and preprocessing costs a minute per dataset on 2 cores. Under pytest-xdist (`make
# test` runs two workers) the first worker that needs a dataset prepares it in a folder every worker of the run sees,
# under a file lock; the others wait and reuse it. nnU-Net's cross-validation split is written there too, before
# any training: two trainings starting at once on two workers would otherwise both write it. Tests add their own
# plans files and train their own trainers (separate result folders), so they do not disturb each other.
HIPPOCAMPUS_TRAINING_CASES = 15
HIPPOCAMPUS_HELDOUT_CASES = 3
ISIC_ID = 517
ISIC_TRAINING_CASES = 20
ISIC_HELDOUT_CASES = 2
ISIC_SIZE = 128  # pixels per side; at 64 the attention of every 2D network is dense (maps of 16 x 16 and less)


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this test run, shared by its xdist workers (each worker has its own folder inside)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def prepared_once(tmp_path_factory: pytest.TempPathFactory, name: str, prepare: Callable[[Path], dict]) -> dict:
    """``prepare(folder)``'s JSON record, run once per test run in ``folder`` (shared by the workers): a later caller,
    in any worker, waits for the first and reads its record. A preparation that failed is started afresh."""
    from filelock import FileLock

    folder = run_folder(tmp_path_factory) / name
    record = folder / "prepared.json"
    with FileLock(f"{folder}.lock"):
        if record.is_file():
            return json.loads(record.read_text())
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        prepared = prepare(folder)
        record.write_text(json.dumps(prepared))
        return prepared


def write_nnunet_split(env: dict, dataset_id: int, configuration: str) -> None:
    """nnU-Net's own 5-fold split of the preprocessed training cases, as the first nnUNetv2_train would write it."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnunet_sparseattn.harness.datasets import require_dataset

    preprocessed = require_dataset(env["nnUNet_preprocessed"], dataset_id, "nnUNet_preprocessed")
    data = str(preprocessed / f"nnUNetPlans_{configuration}")
    cases = sorted(infer_dataset_class(data).get_identifiers(data))
    (preprocessed / "splits_final.json").write_text(json.dumps(generate_crossval_split(cases, seed=12345, n_splits=5)))


@pytest.fixture(scope="session")
def hippocampus_nnunet(shared_data, tmp_path_factory) -> dict:
    """MSD Hippocampus through nnUNetv2_convert_MSD_dataset: 15 training cases planned and preprocessed for
    3d_fullres, and 3 further cases training never sees (``images``/``labels`` folders) for prediction."""
    from nnunet_sparseattn.harness import commands, datasets

    def prepare(work: Path) -> dict:
        env = commands.work_environment(work)
        dataset_id = datasets.convert_msd(shared_data / "Task04_Hippocampus", env, work / "nnunet.log")
        dataset = datasets.dataset_folder(Path(env["nnUNet_raw"]), dataset_id)
        assert dataset is not None, f"convert_msd wrote no dataset {dataset_id}"
        cases = datasets.labelled_cases(dataset / "labelsTr", ".nii.gz")
        heldout = cases[HIPPOCAMPUS_TRAINING_CASES : HIPPOCAMPUS_TRAINING_CASES + HIPPOCAMPUS_HELDOUT_CASES]
        training = datasets.HeldOut("training", dataset / "imagesTr", dataset / "labelsTr")
        datasets.copy_cases(heldout, training, work / "heldout_images", work / "heldout_labels", ".nii.gz")
        datasets.keep_training_cases(dataset, HIPPOCAMPUS_TRAINING_CASES)
        commands.plan_and_preprocess(dataset_id, "3d_fullres", env, work / "nnunet.log")
        write_nnunet_split(env, dataset_id, "3d_fullres")
        return {"id": dataset_id, "heldout": heldout}

    work = run_folder(tmp_path_factory) / "hippocampus"
    prepared = prepared_once(tmp_path_factory, work.name, prepare)
    env = commands.work_environment(work)
    return {
        "work": work,
        "env": env,
        "log": work / "nnunet.log",
        "id": prepared["id"],
        "dataset": datasets.dataset_folder(Path(env["nnUNet_raw"]), prepared["id"]),
        "images": work / "heldout_images",
        "labels": work / "heldout_labels",
        "heldout": prepared["heldout"],
        "configuration": "3d_fullres",
    }


@pytest.fixture(scope="session")
def isic_nnunet(shared_data, tmp_path_factory) -> dict:
    """ISIC 2017 at 128 x 128 through ``convert_2d`` (20 training cases, 2 in imagesTs/labelsTs), planned and
    preprocessed 2d: every 2D end-to-end test trains on it. (At the download's 256 x 256 a CPU training step of the
    7-stage 2D networks takes seconds; at 128 x 128 nnU-Net plans 6 stages and the attention still routes.)"""
    from nnunet_sparseattn.harness import commands

    def prepare(work: Path) -> dict:
        from nnunet_sparseattn.convert2d import convert_2d
        from nnunet_sparseattn.harness.datasets import downsize_2d_pairs

        env = commands.work_environment(work)
        isic = shared_data / "ISIC2017_256"
        small = downsize_2d_pairs(
            isic / "images",
            isic / "masks",
            work / "small",
            cases=ISIC_TRAINING_CASES + ISIC_HELDOUT_CASES,
            size=ISIC_SIZE,
        )
        dataset = convert_2d(
            small / "images",
            small / "masks",
            ISIC_ID,
            name="ISIC2017",
            raw_root=Path(env["nnUNet_raw"]),
            num_test=ISIC_HELDOUT_CASES,
        )
        commands.plan_and_preprocess(ISIC_ID, "2d", env, work / "nnunet.log")
        write_nnunet_split(env, ISIC_ID, "2d")
        return {"dataset": str(dataset)}

    work = run_folder(tmp_path_factory) / "isic2017"
    dataset = Path(prepared_once(tmp_path_factory, work.name, prepare)["dataset"])
    return {
        "work": work,
        "env": commands.work_environment(work),
        "log": work / "nnunet.log",
        "id": ISIC_ID,
        "dataset": dataset,
        "images": dataset / "imagesTs",
        "labels": dataset / "labelsTs",
        "configuration": "2d",
    }


@pytest.fixture(scope="session")
def trained_debug_model(tmp_path_factory) -> Callable[..., Path]:
    """``train(run, trainer, plans="nnUNetPlans") -> model folder``: ``nnUNetv2_train`` of a ``_debug``
    trainer on a prepared dataset (``hippocampus_nnunet``, ``isic_nnunet``), once per test run whichever test or
    worker asks first; the end-to-end, explain and export tests share the models."""
    from nnunet_sparseattn.harness import commands, datasets

    def train(run: dict, trainer: str, plans: str = "nnUNetPlans") -> Path:
        def fit(_: Path) -> dict:
            commands.train(run["id"], run["configuration"], 0, trainer, run["env"], run["log"], plans=plans)
            return {}

        prepared_once(tmp_path_factory, f"trained-{run['id']}-{trainer}-{plans}-{run['configuration']}", fit)
        return datasets.model_folder(run["env"], run["id"], trainer, run["configuration"], plans)

    return train


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

    def make(
        trainer_class: type,
        plans: dict,
        configuration: str,
        dataset_json: dict,
        initialize: bool = True,
        device: str = "cpu",
    ):
        return build(trainer_class, plans, configuration, dataset_json, tmp_path, device=device, initialize=initialize)

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
