"""Predictions over a WIDER FACE split, written in the official evaluation's layout.

    python -m model.predict --checkpoint runs/train/best.pt --data data/wider-mini --split val --out preds
    python -m model.predict --config runs/train/config.yaml --out preds          # best.pt beside it
    python -m model.predict --checkpoint best.pt --out preds --scales 0.5 1 1.5 --flip --overwrite

Writes ``<out>/<event>/<name>.txt`` (name, count, ``x y w h score`` lines in original-image
pixels), what ``python -m model.widerface_eval --pred <out> --gt DIR`` reads. When the official
``.mat`` ground truth is found (``--gt``, or beside the data: ``wider_face_split/``,
``eval_tools/ground_truth/``; the generated mini set has it) it also prints easy / medium / hard AP.

Each image goes through the validation path of training: decoded, downscaled to
``data.cache_max_side``, resized (squashed) to the square network input, detected and
post-processed with the config's ``postprocess`` settings. So a single-scale prediction is exactly
the detections the trainer validated on, mapped back to the original frame.

Test-time augmentation (``--scales``, ``--flip``): the network is fully convolutional, so for a
scale ``f`` the same weights run at input size ``round(f * input_size)`` with anchors of the same
pixel sizes (the default anchors follow the strides; explicit ``anchor_scales`` are rescaled);
``--flip`` adds the mirrored image at each scale. The detections of all passes, in the original
frame, are merged with the config's NMS (hard, or the same Soft-NMS) and ``max_detections``.

Unreadable images are skipped (no prediction file: the evaluation counts them as no detections)
and counted in the summary. Exit status 2 with a one-line message for bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import nms as hard_nms
from tqdm import tqdm

from model.checkpoint import load_checkpoint
from model.config import ConfigError, PostprocessConfig, TrainConfig, config_from_dict, load_config
from model.data.cache import decode_and_fit
from model.data.mini import ensure_mini, generated_params
from model.data.transforms import build_eval_transforms
from model.data.widerface import parse_annotations
from model.engine import build_model, resolve_device
from model.postprocess import SoftNmsMethod, soft_nms
from model.ssd import FaceSSD
from model.widerface_eval import (
    SETTINGS,
    WiderGroundTruth,
    evaluate_widerface,
    find_ground_truth,
    load_ground_truth,
    to_wider_predictions,
    write_all_predictions,
)

__all__ = [
    "PredictSummary",
    "Predictions",
    "evaluate_predictions",
    "find_ground_truth",
    "list_split_images",
    "load_checkpoint",
    "main",
    "merge_detections",
    "model_from_checkpoint",
    "predict_images",
    "predict_split",
    "tta_sizes",
]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# -- checkpoints --------------------------------------------------------------------------------


def model_from_checkpoint(checkpoint: str | Path, cfg: TrainConfig | None = None) -> tuple[FaceSSD, TrainConfig]:
    """The trained model (eval mode, CPU) and its config, from a trainer checkpoint.

    Args:
        checkpoint: ``last.pt``/``best.pt`` from :class:`model.trainer.Trainer` (``{"model": state
            dict, "config": ..., ...}``), or a bare state dict when ``cfg`` is given.
        cfg: the run's config; ``None`` takes the one saved in the checkpoint. Its ``model``
            section must be the checkpoint's.

    Raises:
        ValueError: the config and the checkpoint describe different models, or the weights do
            not fit the model the config builds (one line naming what differs).
    """
    state = load_checkpoint(checkpoint)
    weights = state.get("model", state)
    saved = state.get("config")
    if cfg is None:
        if not isinstance(saved, dict):
            raise ValueError(f"{checkpoint} holds no config; pass the run's config.yaml too")
        cfg = config_from_dict(saved, source=str(checkpoint))
    elif isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        now = cfg.model.model_dump(mode="json")
        changed = [k for k in now if k != "pretrained_backbone" and saved["model"].get(k) != now[k]]
        if changed:
            details = ", ".join(f"model.{k} {saved['model'].get(k)!r} (config: {now[k]!r})" for k in changed)
            raise ValueError(f"{checkpoint} was trained with {details}")
    # The checkpoint's weights replace the backbone's, so never download ImageNet weights here.
    cfg_local = cfg.with_overrides({"model.pretrained_backbone": False})
    model = build_model(cfg_local)
    _load_weights(model, weights, f"{checkpoint}", cfg_local)
    return model.eval(), cfg


def _load_weights(model: FaceSSD, weights: Any, source: str, cfg: TrainConfig) -> None:
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"{source} holds no model state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [k for k in own if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        first = (missing + unexpected + mismatched)[0]
        raise ValueError(
            f"{source} does not fit a {cfg.model.backbone!r} SSD at input {cfg.model.input_size}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} differently shaped "
            f"tensors (first: {first}); was it trained with another backbone or config?"
        )
    model.load_state_dict(weights)


def _model_at_size(model: FaceSSD, cfg: TrainConfig, size: int) -> FaceSSD:
    """The same weights at another square input size, anchors keeping their pixel sizes."""
    if size == model.input_size:
        return model
    overrides: dict[str, Any] = {"model.input_size": size, "model.pretrained_backbone": False}
    if cfg.model.anchor_scales is not None:  # fractions of the input: rescale to keep the pixels
        overrides["model.anchor_scales"] = [s * cfg.model.input_size / size for s in cfg.model.anchor_scales]
    try:
        scaled = build_model(cfg.with_overrides(overrides))
    except (ValueError, ConfigError) as exc:
        raise ValueError(f"test-time input size {size}: {' '.join(str(exc).split())}") from None
    scaled.load_state_dict(model.state_dict())
    return scaled.to(model.image_mean.device).eval()


# -- the images of a split ----------------------------------------------------------------------


def list_split_images(data_root: str | Path, split: str) -> list[str]:
    """Image paths relative to ``<root>/WIDER_<split>/images``: the annotation file's order when the
    split has one (``val``, ``train``), else every image under its event folders (``test``).

    Raises:
        FileNotFoundError: the split has no image folder, or holds no image.
    """
    root = Path(data_root)
    images_dir = root / f"WIDER_{split}" / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no images for split {split!r}: {images_dir} does not exist")
    annotations = root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    if annotations.is_file():
        relpaths = [record.relpath for record in parse_annotations(annotations)[0]]
    else:
        relpaths = sorted(
            p.relative_to(images_dir).as_posix() for p in images_dir.glob("*/*") if p.suffix.lower() in _IMAGE_SUFFIXES
        )
    if not relpaths:
        raise FileNotFoundError(f"no images for split {split!r} under {images_dir}")
    return relpaths


def _image_id(relpath: str) -> str:
    """``<event>/<name>``: the evaluation's key of an image."""
    return Path(relpath).with_suffix("").as_posix()


class _SplitImages(Dataset[tuple[int, list[Tensor] | None, tuple[int, int] | None]]):
    """``(index, [image at each size], (H, W))``, or ``(index, None, None)`` for an unreadable file."""

    def __init__(self, images_dir: Path, relpaths: Sequence[str], sizes: Sequence[int], max_side: int | None) -> None:
        self.images_dir = images_dir
        self.relpaths = list(relpaths)
        self.max_side = max_side
        self.transforms = [build_eval_transforms(size) for size in sizes]

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, index: int) -> tuple[int, list[Tensor] | None, tuple[int, int] | None]:
        try:
            image, orig_size = decode_and_fit(self.images_dir / self.relpaths[index], self.max_side)
        except RuntimeError:  # counted and named in the summary
            return index, None, None
        return index, [transform(image) for transform in self.transforms], orig_size


def _collate(batch: list[tuple[int, list[Tensor] | None, tuple[int, int] | None]]) -> dict[str, Any]:
    readable = [item for item in batch if item[1] is not None]
    return {
        "indices": [index for index, _, _ in readable],
        "unreadable": [index for index, images, _ in batch if images is None],
        "images": [torch.stack(per_size) for per_size in zip(*(images for _, images, _ in readable))],
        "orig_sizes": [size for _, _, size in readable],
    }


# -- prediction ---------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Detections in original-image pixels, one ``{"boxes": (N, 4) xyxy, "scores": (N,)}`` per
    readable image (CPU tensors), with ``<event>/<name>`` ids; ``unreadable`` lists relpaths."""

    image_ids: list[str]
    detections: list[dict[str, Tensor]]
    unreadable: list[str] = field(default_factory=list)


def merge_detections(boxes: Tensor, scores: Tensor, post: PostprocessConfig) -> dict[str, Tensor]:
    """One image's detections from several passes, merged with the config's NMS and limit."""
    order = scores.argsort(descending=True, stable=True)
    boxes, scores = boxes[order], scores[order]
    if post.nms == "nms":
        keep = hard_nms(boxes, scores, post.nms_iou)[: post.max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep]}
    method: SoftNmsMethod = "linear" if post.nms == "soft_linear" else "gaussian"
    keep, new_scores = soft_nms(boxes, scores, method, post.nms_iou, post.soft_nms_sigma, post.score_threshold)
    return {"boxes": boxes[keep][: post.max_detections], "scores": new_scores[: post.max_detections]}


def tta_sizes(input_size: int, scales: Sequence[float]) -> list[int]:
    """Input sizes for the scale factors, in order, duplicates removed."""
    if not scales or any(not (s > 0) for s in scales):
        raise ValueError(f"scales must be positive numbers, got {list(scales)}")
    return list(dict.fromkeys(max(1, round(s * input_size)) for s in scales))


@torch.no_grad()
def predict_images(
    model: FaceSSD,
    cfg: TrainConfig,
    images_dir: str | Path,
    relpaths: Sequence[str],
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Predictions:
    """Detect faces in ``images_dir/<relpath>`` for each relpath; see the module docstring.

    Args:
        model: the trained detector (its input size is ``cfg.model.input_size``).
        cfg: the run's config: ``postprocess``, ``data.cache_max_side``, and the defaults of
            ``batch_size``, ``num_workers`` and ``device``.
        images_dir: ``<root>/WIDER_<split>/images``.
        relpaths: images to predict, e.g. from :func:`list_split_images` (or a subset).
        scales: test-time scale factors of the input size; ``(1.0,)`` is the validation path.
        flip: also run each scale on the horizontally mirrored image.
        progress: show a tqdm bar (images).
    """
    dev = torch.device(device) if device is not None else resolve_device(cfg.device)
    sizes = tta_sizes(model.input_size, scales)
    nets = [_model_at_size(model.to(dev), cfg, size) for size in sizes]  # FaceSSD.predict switches to eval
    passes = [(net, size, mirrored) for net, size in zip(nets, sizes) for mirrored in ((False, True) if flip else (False,))]
    post = cfg.postprocess
    # Beyond the cache's size the validation path's downscale would throw away pixels a larger scale uses.
    max_side = cfg.data.cache_max_side if max(sizes) <= cfg.data.cache_max_side else None
    dataset = _SplitImages(Path(images_dir), relpaths, sizes, max_side)
    workers = cfg.data.num_workers if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size or cfg.batch_size, num_workers=workers, collate_fn=_collate, shuffle=False)
    result = Predictions(image_ids=[], detections=[])
    with tqdm(total=len(dataset), desc="predict", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for batch in loader:
            result.unreadable += [dataset.relpaths[i] for i in batch["unreadable"]]
            found: list[list[dict[str, Tensor]]] = [[] for _ in batch["indices"]]
            for net, size, mirrored in passes:
                images = batch["images"][sizes.index(size)].to(dev)
                detections = net.predict(images.flip(-1) if mirrored else images, **post.model_dump())
                for j, det in enumerate(detections):
                    boxes = det["boxes"].cpu()
                    if mirrored:  # back to the unmirrored frame: x -> size - x
                        boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
                    height, width = batch["orig_sizes"][j]
                    factor = torch.tensor([width / size, height / size] * 2, dtype=boxes.dtype)
                    found[j].append({"boxes": boxes * factor, "scores": det["scores"].cpu()})
            for index, parts in zip(batch["indices"], found):
                if len(parts) == 1:
                    merged = parts[0]
                else:
                    merged = merge_detections(
                        torch.cat([p["boxes"] for p in parts]), torch.cat([p["scores"] for p in parts]), post
                    )
                result.image_ids.append(_image_id(dataset.relpaths[index]))
                result.detections.append(merged)
            bar.update(len(batch["indices"]) + len(batch["unreadable"]))
    return result


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_split` did; ``aps`` is easy/medium/hard AP when ground truth was given."""

    split: str
    out_dir: Path
    images: int
    detections: int
    unreadable: tuple[str, ...]
    sizes: tuple[int, ...]
    flip: bool
    seconds: float
    aps: dict[str, float] | None = None

    def format(self) -> str:
        tta = f"sizes {', '.join(map(str, self.sizes))}" + (" + flip" if self.flip else "")
        lines = [
            f"predicted {self.images} {self.split} images ({tta}): {self.detections} detections "
            f"in {self.seconds:.1f} s ({self.images / max(self.seconds, 1e-9):.1f} images/s) -> {self.out_dir}"
        ]
        if self.unreadable:
            more = f", +{len(self.unreadable) - 3} more" if len(self.unreadable) > 3 else ""
            lines.append(f"skipped {len(self.unreadable)} unreadable images ({', '.join(self.unreadable[:3])}{more})")
        else:
            lines.append("skipped 0 unreadable images")
        if self.aps is not None:
            lines.append("WIDER FACE AP  " + "  ".join(f"{s} {self.aps[s]:.4f}" for s in SETTINGS))
        return "\n".join(lines)


def evaluate_predictions(predictions: Predictions, gt: WiderGroundTruth | str | Path) -> dict[str, float]:
    """Official easy / medium / hard AP of in-memory predictions (what writing the files and
    running ``python -m model.widerface_eval`` on them gives); ``gt`` loaded or its folder."""
    gt = gt if isinstance(gt, WiderGroundTruth) else load_ground_truth(gt)
    seen = {*predictions.image_ids, *(_image_id(rel) for rel in predictions.unreadable)}
    with warnings.catch_warnings():
        if all(image.image_id in seen for image in gt.images):  # only skipped images lack predictions: said already
            warnings.filterwarnings("ignore", message=r".*have no predictions and count as no detections")
        return evaluate_widerface(to_wider_predictions(predictions.image_ids, predictions.detections), gt)


def predict_split(
    model: FaceSSD,
    cfg: TrainConfig,
    data_root: str | Path,
    split: str,
    out_dir: str | Path,
    *,
    gt_dir: str | Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> PredictSummary:
    """Predict every image of a split and write the official prediction layout into ``out_dir``.

    Args:
        model, cfg: the trained detector and its run's config.
        data_root: the WIDER layout root (``WIDER_<split>/images``, ``wider_face_split``).
        split: ``val``, ``train`` or ``test``.
        out_dir: prediction root; ``<event>/<name>.txt`` per readable image.
        gt_dir: a folder with the official ``.mat`` files: the summary then holds easy/medium/hard AP.
        overwrite: first delete the ``<event>/*.txt`` files already in ``out_dir`` (without it, a
            folder holding predictions is refused, so stale files never mix into an evaluation).
        options: passed to :func:`predict_images` (``scales``, ``flip``, ``batch_size``,
            ``num_workers``, ``device``, ``progress``).

    Raises:
        FileNotFoundError: the split has no images, or ``gt_dir`` lacks a ``.mat`` file.
        FileExistsError: ``out_dir`` already holds predictions and ``overwrite`` is False.
    """
    out = Path(out_dir)
    relpaths = list_split_images(data_root, split)
    gt = load_ground_truth(gt_dir) if gt_dir is not None else None  # fail before the long part
    _prepare_out_dir(out, overwrite)
    start = time.perf_counter()
    predictions = predict_images(model, cfg, Path(data_root) / f"WIDER_{split}" / "images", relpaths, **options)
    write_all_predictions(out, predictions.image_ids, predictions.detections)
    seconds = time.perf_counter() - start
    aps = evaluate_predictions(predictions, gt) if gt is not None else None
    return PredictSummary(
        split=split,
        out_dir=out,
        images=len(predictions.image_ids),
        detections=sum(len(d["scores"]) for d in predictions.detections),
        unreadable=tuple(predictions.unreadable),
        sizes=tuple(tta_sizes(model.input_size, options.get("scales", (1.0,)))),
        flip=bool(options.get("flip", False)),
        seconds=seconds,
        aps=aps,
    )


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    existing = sorted(out.glob("*/*.txt")) if out.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds {len(existing)} prediction files; pass --overwrite or another --out")
    for path in existing:  # only the prediction layout's files, never anything else in the folder
        path.unlink()
    for folder in (p for p in out.glob("*") if p.is_dir() and not any(p.iterdir())):
        folder.rmdir()
    out.mkdir(parents=True, exist_ok=True)


# -- command line -------------------------------------------------------------------------------


def _resolve(args: argparse.Namespace) -> tuple[FaceSSD, TrainConfig, Path, torch.device | None]:
    try:
        device = resolve_device(args.device) if args.device else None
    except RuntimeError as exc:  # e.g. --device cuda without CUDA
        raise ValueError(str(exc)) from None
    checkpoint = args.checkpoint
    cfg = load_config(args.config) if args.config is not None else None
    if checkpoint is None:
        if args.config is None:
            raise ValueError("pass --checkpoint CKPT, or --config C.yaml of a run folder holding best.pt or last.pt")
        found = [args.config.parent / name for name in ("best.pt", "last.pt") if (args.config.parent / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no best.pt or last.pt beside {args.config}; pass --checkpoint")
        checkpoint = found[0]
    model, cfg = model_from_checkpoint(checkpoint, cfg)
    data_root = args.data if args.data is not None else cfg.data.root
    if generated_params(data_root):  # a generated mini set: make sure it carries its .mat ground truth
        ensure_mini(data_root, **generated_params(data_root))
    print(f"model: {cfg.model.backbone} SSD at {cfg.model.input_size} px from {checkpoint}")
    return model, cfg, Path(data_root), device


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, help="trainer checkpoint (best.pt / last.pt)")
    parser.add_argument("--config", type=Path, help="run config (default: the checkpoint's; alone: its folder's best.pt)")
    parser.add_argument("--data", type=Path, help="WIDER layout root (default: the config's data.root)")
    parser.add_argument("--split", default="val", help="val, train or test (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="prediction root: <event>/<name>.txt files")
    parser.add_argument("--overwrite", action="store_true", help="replace the prediction files already in --out")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test-time scale factors of the input size")
    parser.add_argument("--flip", action="store_true", help="also predict the mirrored image at each scale")
    parser.add_argument("--gt", type=Path, help="official .mat ground truth (default: found under --data, for val)")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the config's)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: the config's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the config's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        model, cfg, data_root, device = _resolve(args)
        gt_dir = args.gt if args.gt is not None else (find_ground_truth(data_root) if args.split == "val" else None)
        summary = predict_split(
            model,
            cfg,
            data_root,
            args.split,
            args.out,
            gt_dir=gt_dir,
            overwrite=args.overwrite,
            scales=args.scales,
            flip=args.flip,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ConfigError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(summary.format())
    if gt_dir is not None:
        print(f"ground truth: {gt_dir}  (python -m model.widerface_eval --pred {args.out} --gt {gt_dir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
