"""``nnunet-sparseattn explain``: what the attention of a trained model decided on one image, drawn on the image.

nnU-Net's own predictor runs on the image (its preprocessing, sliding window and Gaussian weighting; test-time
augmentation off), with forward hooks recording every window (:mod:`.recorder`). Query points are given in the
image's own voxel coordinates, or default to the centroid of each predicted structure and the most uncertain voxel;
each is mapped through nnU-Net's transpose, crop, resampling and padding to the sliding window that holds it nearest
its centre (:mod:`.geometry`). The default points come from the prediction, so when the network has Swin blocks
(whose window weights are computed only for the windows asked for) the predictor runs a second time, with the points
known.

Written into the output folder (3D images: NIfTI maps in the image's geometry; 2D images: one NPZ of maps):

- ``prediction<ending>``: the segmentation, written by nnU-Net's own writer;
- ``case.png``: image, prediction (and ``--reference``) through the first query point;
- ``overview.png``: one row per query point, one panel per attention module;
- ``points/<point>/``: per routed module (BSA, MDSA) the query's region and its routed key regions shaded by routing
  weight (``*_routing.png``, ``*_routing`` and ``*_regions`` maps), BSA's coarse attention (``*_coarse``); per ISAM
  (bilateral) the query token's attention weights inside its Swin window in each block (``*_window.png``);
- ``fsam_channel_weights.png``, ``rendering.png`` and the ``rendering_refined`` map (bilateral);
- ``explain.json``: the points, their windows, tokens and regions, what was routed, and with ``--reference`` how often
  routed key regions hold foreground (:func:`.analysis.routing_foreground`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nnunet_sparseattn.errors import UserError, check_output_path, reading, refuse_inside
from nnunet_sparseattn.explain import analysis, figures
from nnunet_sparseattn.explain.model import Case, Model, model_folder
from nnunet_sparseattn.explain.recorder import Recorder, attention_modules
from nnunet_sparseattn.plans.variants import attention_label

__all__ = ["ExplainRequest", "run_explain"]


@dataclass
class ExplainRequest:
    image: Path
    output: Path
    model: Optional[str] = None
    dataset: Optional[str] = None
    configuration: Optional[str] = None
    trainer: Optional[str] = None
    plans: str = "nnUNetPlans"
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"
    points: Sequence[str] = ()
    reference: Optional[Path] = None
    device: str = "cpu"


def _say(text: str) -> None:
    print(text, flush=True)


def _name(module: str) -> str:
    return module.replace("/", "_")


def run_explain(request: ExplainRequest) -> dict[str, Any]:
    """Run the explanation (see the module docstring) of one image, or of every case of a folder (each in a subfolder
    of the output; with references, the routing statistics pooled over the cases too). Returns what ``explain.json``
    holds."""
    from nnunet_sparseattn.harness.machine import check_device

    check_device(request.device, "-device", indexed=True)
    check_output_path(request.output, "-o")
    folder = model_folder(request.model, request.dataset, request.configuration, request.trainer, request.plans)
    model = Model(folder, request.fold, request.checkpoint, request.device)
    image = Path(request.image).expanduser()
    inputs = {"model folder": folder, **({"image folder": image} if image.is_dir() else {})}
    refuse_inside(request.output, inputs, "-o", "give a folder of its own for the explanation")
    if image.is_dir():
        if request.points:
            raise UserError("--point applies to one image: give -i FILE (a folder's cases get the default points)")
        files = _folder_cases(image, model.dataset_json["file_ending"])
    else:
        files = [(None, image)]
    # every refusal before any work: read the images, their references and the points first
    cases = []
    for name, file in files:
        case = model.read(file)
        reference = None
        if request.reference is not None:
            ref = Path(request.reference).expanduser()
            path = ref / f"{name}{model.dataset_json['file_ending']}" if name is not None and ref.is_dir() else ref
            reference = _read_reference(model, path, case)
        given = [analysis.parse_point(p, 2 if case.is_2d else 3) for p in request.points]
        for values in given:
            analysis.check_inside(values, case.spatial, case.is_2d)
        cases.append((name, case, reference, given))
    model.load()
    if model.configuration_manager.previous_stage_name is not None:
        raise UserError(
            f"{folder.name} is a cascade's second stage (it also takes the first stage's segmentation): "
            "explain its first stage's model instead"
        )
    output = Path(request.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        summaries = []
        for name, case, reference, given in cases:
            out = staging if name is None else staging / name
            out.mkdir(parents=True, exist_ok=True)
            if name is not None:
                _say(f"== {name}")
            summaries.append(_explain_case(model, case, reference, given, out))
        summary = summaries[0]
        if len(files) > 1 or files[0][0] is not None:
            summary = {"cases": {n: s for (n, _), s in zip(files, summaries)}}
            pooled = analysis.pool_routing_foreground([s.get("routing_foreground", {}) for s in summaries])
            if pooled:
                summary["routing_foreground"] = pooled
                _say(f"== routing vs reference, pooled over {len(files)} cases")
                _say_routing(pooled)
            (staging / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
        _publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _folder_cases(folder: Path, file_ending: str) -> list[tuple[Optional[str], Path]]:
    """The cases of a folder as nnU-Net names them (``CASE_XXXX<ending>``), each by its first channel file."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    names = [str(n) for n in get_identifiers_from_splitted_dataset_folder(str(folder), file_ending)]
    if not names:
        raise UserError(f"the folder {folder} holds no image named CASE_0000{file_ending}")
    return [(n, folder / f"{n}_0000{file_ending}") for n in names]


def _explain_case(
    model: Model, case: Case, reference: Optional[np.ndarray], given: list[tuple[int, ...]], out: Path
) -> dict[str, Any]:
    data, properties = model.preprocess(case)
    geometry, patches = model.windows(case, data, properties)
    modules = attention_modules(model.network)
    # given points are placed before the prediction, so one run records everything; default points come from the
    # prediction, so a network with Swin blocks runs a second time for their window weights
    named = [(f"point {i}", v) for i, v in enumerate(given)]
    points = analysis.locate_points(named, case.spatial, case.is_2d, geometry, patches) if named else []
    recorder = Recorder(model.network, window_requests=_window_requests(points))
    try:
        logits = model.predict(data, recorder)
        seg, probabilities = model.segmentation(logits, properties)
        if not points:
            # in the image's own coordinates, as --point takes them (y,x for a 2D image: its leading axis dropped)
            named = [
                (name, voxel[1:] if case.is_2d else voxel)
                for name, voxel in analysis.default_points(seg, probabilities, model.labels)
            ]
            points = analysis.locate_points(named, case.spatial, case.is_2d, geometry, patches)
            if modules["window"]:
                kept = recorder.keep_first_run()
                recorder.reset(_window_requests(points))
                model.predict(data, recorder)
                kept()
    finally:
        recorder.close()
    return _write(model, case, reference, seg, geometry, patches, points, modules, recorder, out)


def _window_requests(points: Sequence[analysis.QueryPoint]) -> dict[int, list[tuple[int, ...]]]:
    """Per sliding window, the window-local voxels whose Swin-window weights the recorder asks for."""
    requests: dict[int, list[tuple[int, ...]]] = {}
    for point in points:
        requests.setdefault(point.patch.index, []).append(point.local)
    return requests


def _read_reference(model: Model, path: Path, case: Case) -> np.ndarray:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"the reference {path} does not exist")
    reader = model.plans_manager.image_reader_writer_class()
    with reading(path, "the reference", f"nnU-Net's {type(reader).__name__}"):
        seg, _ = reader.read_seg(str(path))
    if tuple(seg.shape[1:]) != case.spatial:
        raise UserError(
            f"the reference {path} has shape {tuple(seg.shape[1:])}, the image {case.spatial}: give the "
            "image's own label file"
        )
    return np.asarray(seg[0]).astype(np.int64)


def _publish(staging: Path, output: Path) -> None:
    """Move what was written into ``output`` (made if missing), replacing earlier files of the same names."""
    output.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = output / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(item), str(target))


class _Writer:
    """Maps in the image's geometry: NIfTI (or the reader's format) for 3D images, one NPZ per folder for 2D."""

    def __init__(self, model: Model, case: Case):
        self.model, self.case = model, case
        self.npz: dict[Path, dict[str, np.ndarray]] = {}
        self.ending = model.dataset_json["file_ending"]

    def write(self, folder: Path, name: str, array: np.ndarray) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if self.case.is_2d:
            self.npz.setdefault(folder / "maps.npz", {})[name] = array[0]
            return f"{folder.name}/maps.npz:{name}"
        if array.dtype == np.uint8:  # labels: nnU-Net's own writer, any format it reads
            path = folder / f"{name}{self.ending}"
            self.model.write_segmentation(array, path, self.case)
            return path.name
        path = folder / f"{name}.nii.gz"
        _write_float_nifti(array, path, self.case.properties)
        return path.name

    def close(self) -> None:
        for path, arrays in self.npz.items():
            np.savez_compressed(path, **dict[str, Any](arrays))


def _write_float_nifti(array: np.ndarray, path: Path, properties: dict) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    stuff = properties.get("sitk_stuff")
    if stuff is not None and len(stuff["spacing"]) == 3:
        image.SetSpacing(stuff["spacing"])
        image.SetOrigin(stuff["origin"])
        image.SetDirection(stuff["direction"])
    else:  # another reader: its spacing (reader's axes, reversed for SimpleITK), no origin or direction
        image.SetSpacing([float(s) for s in reversed(properties["spacing"])])
    sitk.WriteImage(image, str(path), True)


def _write(
    model: Model,
    case: Case,
    reference: Optional[np.ndarray],
    seg: np.ndarray,
    geometry,
    patches,
    points: list[analysis.QueryPoint],
    modules: dict[str, list[str]],
    recorder: Recorder,
    out: Path,
) -> dict[str, Any]:
    labels = model.labels
    spacing = case.properties["spacing"]
    patch_size = tuple(model.configuration_manager.patch_size)
    writer = _Writer(model, case)
    model.write_segmentation(seg, out / f"prediction{writer.ending}", case)
    first = points[0].voxel
    figures.case_figure(
        case.image,
        spacing,
        first,
        seg,
        labels,
        out / "case.png",
        reference,
        title=f"{case.files[0].name}: {model.trainer_name} ({model.folder.name}, fold {model.fold})",
    )
    summary: dict[str, Any] = {
        "image": [str(f) for f in case.files],
        "model": str(model.folder),
        "fold": model.fold,
        "trainer": model.trainer_name,
        "geometry": {
            "transpose_forward": list(geometry.transpose),
            "crop_start": list(geometry.crop_start),
            "cropped_shape": list(geometry.cropped),
            "resampled_shape": list(geometry.resampled),
            "pad_below": list(geometry.pad_below),
            "sliding_windows": [{"index": p.index, "start": list(p.start), "size": list(p.size)} for p in patches],
        },
        "points": [
            {
                "name": p.name,
                "voxel": list(p.voxel[1:] if case.is_2d else p.voxel),
                "network_voxel": list(p.network),
                "sliding_window": p.patch.index,
                "in_window": list(p.local),
            }
            for p in points
        ],
        "modules": {},
    }
    if not any(modules.values()):
        line = (
            f"no attention to show: {model.trainer_name}'s network ({type(model.network).__name__}) has no routed "
            "attention, Swin window attention, FSAM or rendering module; wrote the prediction"
        )
        _say(line)
        summary["note"] = line
        return _finish(summary, writer, out)

    # outlined on every attention picture: the reference where given (what the routing is judged against), else the
    # prediction
    structures = (
        figures.Structures(seg, labels, "prediction")
        if reference is None
        else figures.Structures(reference, labels, "reference")
    )
    overview_rows: dict[str, list] = {p.name: [] for p in points}
    routed = analysis.routed_views(recorder, modules["routed"], points, patch_size)
    for view in routed:
        if view.key_layout.num_regions == 1:  # one region (a small deep stage): dense, nothing to draw
            continue
        folder = out / "points" / view.point.slug
        maps = view.maps(geometry)
        files = [writer.write(folder, f"{_name(view.module)}_{key}", value) for key, value in maps.items()]
        k = "every one" if view.routed is None else len(view.routed)
        kind = _kind(model.network, view.module)
        title = (
            f"{kind} attention {view.module}, query: {view.point.name} {_coords(view.point, case)}\n"
            f"its feature map ({'x'.join(map(str, view.query_layout.spatial))} tokens for the "
            f"{'x'.join(map(str, patch_size))} window) is cut into {view.key_layout.num_regions} regions of "
            f"{'x'.join(map(str, view.query_layout.region))} tokens; the query's region ({view.query_region}) "
            f"attends to {k} of them"
        )
        figures.routing_figure(
            case.image,
            spacing,
            view.point.voxel,
            maps,
            folder / f"{_name(view.module)}_routing.png",
            title,
            structures=structures,
        )
        weights = None if view.weights is None or view.routed is None else view.weights[view.routed]
        entry = summary["modules"].setdefault(view.module, {"kind": _kind(model.network, view.module), "points": {}})
        entry["points"][view.point.name] = {
            "query_token": list(view.query_token),
            "query_region": int(view.query_region),
            "regions": int(view.key_layout.num_regions),
            "region_size_tokens": list(view.query_layout.region),
            "map_shape": list(view.query_layout.spatial),
            "routed": None if view.routed is None else [int(r) for r in view.routed],
            "routing_weights": None if weights is None else [round(float(w), 4) for w in weights],
            "files": files + [f"{_name(view.module)}_routing.png"],
        }
        routed_text = (
            "dense (every region)"
            if view.routed is None or weights is None
            else ", ".join(f"{int(r)} ({w:.2f})" for r, w in zip(view.routed, weights))
        )
        _say(
            f"{view.point.name} {_coords(view.point, case)}: {view.module} query region {view.query_region} of "
            f"{view.key_layout.num_regions} -> key regions {routed_text}"
        )
        if view.routed is not None and "routing" in maps:
            overview_rows[view.point.name].append(
                (
                    f"{kind} {view.module}:\n{len(view.routed)} of {view.key_layout.num_regions} regions routed",
                    "routing",
                    maps["routing"],
                    maps["regions"] == 2,
                )
            )
    dense = [m for m in modules["routed"] if not any(r.module == m for r in recorder.routing)]
    for module in dense:
        summary["modules"].setdefault(module, {"kind": _kind(model.network, module)})["dense"] = True
    if dense:
        _say(
            f"dense attention (top-k keeps every region, nothing routed; one region: nothing drawn): {', '.join(dense)}"
        )

    windows = analysis.window_views(recorder, points, patch_size)
    for point in points:
        groups: dict[str, list[analysis.WindowView]] = {}
        for window_view in windows:
            if window_view.point == point:
                groups.setdefault(window_view.module.rsplit(".blocks.", 1)[0], []).append(window_view)
        for stage, views in groups.items():
            folder = out / "points" / point.slug
            blocks = []
            for window_view in views:
                window_maps = window_view.maps(geometry)
                for key, value in window_maps.items():
                    writer.write(folder, f"{_name(window_view.module)}_{key}", value)
                block = window_view.module.rsplit(".", 1)[-1]
                blocks.append((f"block {block} (window {window_view.window})", window_maps))
            figures.window_figure(
                case.image,
                spacing,
                point.voxel,
                blocks,
                folder / f"{_name(stage)}_window.png",
                f"{stage}: Swin window attention of the query ({point.name} {_coords(point, case)}), token "
                f"{views[0].token} of a {'x'.join(map(str, views[0].spatial))} map",
                structures=structures,
            )
            summary["modules"].setdefault(stage, {"kind": "ISAM (Swin window attention)", "points": {}})["points"][
                point.name
            ] = {
                "token": list(views[0].token),
                "windows": [int(v.window) for v in views],
                "figure": f"{_name(stage)}_window.png",
            }
            _say(
                f"{point.name} {_coords(point, case)}: {stage} token {views[0].token}, windows "
                f"{[v.window for v in views]} -> points/{point.slug}/{_name(stage)}_window.png"
            )
            overview_rows[point.name].append(
                (
                    f"Swin {stage}, block 0:\nweights in the query's window",
                    "window",
                    blocks[0][1]["window"],
                    blocks[0][1]["query"],
                )
            )

    if recorder.channels:
        names = list(dict.fromkeys(r.module for r in recorder.channels))
        stacked = [(n, np.stack([r.weights for r in recorder.channels if r.module == n])) for n in names]
        figures.channel_figure(
            stacked, out / "fsam_channel_weights.png", f"FSAM channel weights ({len(patches)} sliding window(s))"
        )
        for n, w in stacked:
            summary["modules"][n] = {"kind": "FSAM", "channel_weights_mean": [round(float(v), 4) for v in w.mean(0)]}
        _say(f"FSAM channel weights of {len(names)} stage(s) -> fsam_channel_weights.png")

    if recorder.rendered:
        refined = _refined_map(recorder, geometry, patches)
        name = writer.write(out, "rendering_refined", refined)
        figures.rendering_figure(
            case.image,
            spacing,
            first,
            refined,
            seg,
            labels,
            out / "rendering.png",
            f"attention rendering: {int(refined.sum())} voxels of the image refined "
            f"(the most uncertain of each sliding window)",
        )
        summary["modules"]["rendering"] = {
            "kind": "attention rendering",
            "refined_voxels": int(refined.sum()),
            "map": name,
        }
        _say(f"attention rendering refined {int(refined.sum())} voxels -> rendering.png")

    rows = [(p.name + " " + _coords(p, case), p.voxel, overview_rows[p.name][:4]) for p in points]
    if any(panels for _, _, panels in rows):
        figures.overview_figure(
            case.image,
            spacing,
            seg,
            labels,
            rows,
            out / "overview.png",
            f"{case.files[0].name}: where {model.trainer_name} attends from each query point",
            structures=structures,
        )
    if reference is not None and modules["routed"]:
        stats = analysis.routing_foreground(recorder, modules["routed"], geometry, patches, reference, labels)
        summary["routing_foreground"] = stats
        _say_routing(stats)
    return _finish(summary, writer, out)


def _say_routing(stats: dict[str, dict]) -> None:
    for module, per_label in stats.items():
        for label, s in per_label.items():
            _say(
                f"routing vs reference, {module}: queries in {label} ({s['queries']} voxels) route to key regions "
                f"holding foreground {100 * s['routed_with_foreground']:.0f}% of the time; "
                f"{100 * s['all_with_foreground']:.0f}% of all key regions hold foreground"
            )


def _finish(summary: dict[str, Any], writer: _Writer, out: Path) -> dict[str, Any]:
    writer.close()
    (out / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _coords(point: analysis.QueryPoint, case: Case) -> str:
    values = point.voxel[1:] if case.is_2d else point.voxel
    return ("(y,x)=" if case.is_2d else "(z,y,x)=") + ",".join(map(str, values))


def _kind(network, module: str) -> str:
    return attention_label(network.get_submodule(module))  # what the method's registration calls it


def _refined_map(recorder: Recorder, geometry, patches) -> np.ndarray:
    """1 on every original voxel whose network voxel the rendering module refined in some sliding window."""
    by_index = {p.index: p for p in patches}
    refined = np.zeros(geometry.original, dtype=np.uint8)
    for record in recorder.rendered:
        patch = by_index[record.patch]
        local = np.stack(np.unravel_index(record.index, record.shape), axis=1)
        for voxel in local:
            network = list(patch.start)
            for j, axis in enumerate(patch.spatial_axes):
                network[axis] = patch.start[axis] + int(voxel[j])
            original = geometry.original_voxel(network)
            if all(0 <= o < s for o, s in zip(original, geometry.original)):
                refined[original] = 1
    return refined
