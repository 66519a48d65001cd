"""Export a trained face detector for serving, post-processing included: TorchScript or ONNX.

    python -m model.export_model --checkpoint runs/train/best.pt --format torchscript --out face_ssd.ts
    python -m model.export_model --checkpoint runs/train/best.pt --format onnx --out face_ssd.onnx

The exported module (the ``Detector`` here) runs the network, the box decoding and hard NMS:

* input ``images``: float32 ``(B, 3, S, S)``, RGB in [0, 1], ``S = model.input_size`` (the batch
  size is free; S is fixed because the anchors are);
* outputs ``boxes`` float32 ``(B, D, 4)`` xyxy in input pixels, ``scores`` float32 ``(B, D)``
  descending, ``num_detections`` int64 ``(B,)``; ``D = postprocess.max_detections``, and the rows
  of image ``b`` from ``num_detections[b]`` on are zero padding.

What the consumer does around it (as ``model.predict`` does): resize each image to ``S x S``
without keeping its aspect ratio (bilinear, antialiased, from uint8) and divide by 255; map the
boxes back with ``x * W / S`` and ``y * H / S`` for an original ``W x H`` image. A JSON file
beside the export (``<out>.json``) records S, the post-processing settings and this contract.

Soft-NMS is not exported: its sequential, data-dependent loop has no graph form. A config using it
is refused unless ``--hard-nms`` accepts hard NMS at the same IoU instead.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``, opset 17): it needs only the
``onnx`` package and maps torchvision's NMS to ONNX ``NonMaxSuppression``; the newer exporter would
also need ``onnxscript``. Install with ``pip install -e '.[onnx]'`` (onnx, and onnxruntime to run
the result); without onnx, ``--format onnx`` stops with a message saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area, clip_boxes_to_image

from model.config import ConfigError, PostprocessConfig, TrainConfig, load_config
from model.predict import model_from_checkpoint
from model.ssd import FaceSSD

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
OUTPUT_NAMES = ("boxes", "scores", "num_detections")


class Detector(nn.Module):
    """Network + decoding + hard NMS with fixed-shape outputs; see the module docstring.

    The same arithmetic as :func:`model.postprocess.postprocess` with ``nms="nms"`` (top-k anchors,
    decode, clip, drop empty boxes, score threshold, class-agnostic NMS per image, the first
    ``max_detections``), written without Python-side shapes so that it scripts and traces for any
    batch size.

    Args:
        network: maps images to ``(cls_logits (B, A, 2), bbox_regression (B, A, 4))``: the
            :class:`FaceSSD` itself, or a traced copy of it.
        model: the :class:`FaceSSD` the network came from (anchors, box coder, input size).
        post: the post-processing settings; ``nms`` must be ``"nms"``.
    """

    # The buffer registered in __init__, declared for the type checker only: a class annotation
    # would replace the inherited nn.Module ones that torch.jit.script reads.
    if TYPE_CHECKING:
        anchors: Tensor

    def __init__(self, network: nn.Module, model: FaceSSD, post: PostprocessConfig) -> None:
        super().__init__()
        if post.nms != "nms":
            raise ValueError(f"the exported model holds hard NMS only, got postprocess.nms={post.nms!r}")
        self.network = network
        self.input_size = model.input_size
        self.register_buffer("anchors", model.anchors("cpu", torch.float32).clone())
        self.box_coder = model.box_coder
        self.topk = min(post.topk_candidates, model.num_anchors)
        self.score_threshold = post.score_threshold
        self.nms_iou = post.nms_iou
        self.max_detections = post.max_detections

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != self.input_size or images.shape[3] != self.input_size:
            raise ValueError(f"expected float images (B, 3, {self.input_size}, {self.input_size}) in [0, 1]")
        cls_logits, bbox_regression = self.network(images)
        scores = F.softmax(cls_logits.float(), dim=-1)[:, :, 1]
        top_scores, top_idx = scores.topk(self.topk, dim=1)
        codes = bbox_regression.float().gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = self.box_coder.decode_single(codes.reshape(-1, 4), self.anchors[top_idx].reshape(-1, 4))
        boxes = boxes.reshape(codes.shape)
        boxes = clip_boxes_to_image(boxes, (self.input_size, self.input_size))
        # A box clipped to nothing is no detection (as in model.postprocess).
        top_scores = top_scores.masked_fill(box_area(boxes.reshape(-1, 4)).reshape(top_scores.shape) <= 0, -1.0)

        # Image index of every candidate, from tensor shapes only (no Python ints: any batch size).
        image_ids = torch.cumsum(torch.ones_like(top_scores[:, 0], dtype=torch.int64), dim=0) - 1
        flat_image = (image_ids[:, None] + torch.zeros_like(top_idx)).reshape(-1)
        flat_boxes, flat_scores = boxes.reshape(-1, 4), top_scores.reshape(-1)
        candidates = torch.nonzero(flat_scores >= self.score_threshold).reshape(-1)
        order = batched_nms(flat_boxes[candidates], flat_scores[candidates], flat_image[candidates], self.nms_iou)
        kept = candidates[order]  # descending score over the whole batch
        kept_image = flat_image[kept]
        # Rank of each kept box within its image: a running count per image.
        onehot = (kept_image[:, None] == image_ids[None, :]).to(torch.int64)
        rank = (torch.cumsum(onehot, dim=0) * onehot).sum(dim=1) - 1
        slot = torch.nonzero(rank < self.max_detections).reshape(-1)
        target = kept_image[slot] * self.max_detections + rank[slot]
        padding = torch.zeros_like(image_ids[:, None], dtype=torch.float32) + torch.zeros(self.max_detections)
        out_scores = padding.reshape(-1).scatter(0, target, flat_scores[kept[slot]])
        out_boxes = (padding.reshape(-1, 1) + torch.zeros(4)).scatter(0, target[:, None].expand(-1, 4), flat_boxes[kept[slot]])
        counts = onehot.sum(dim=0).clamp(max=self.max_detections)
        return out_boxes.reshape(-1, self.max_detections, 4), out_scores.reshape(-1, self.max_detections), counts


def build_detector(model: FaceSSD, post: PostprocessConfig) -> Detector:
    """The eager exportable module (for ONNX, and as the reference in tests)."""
    return Detector(_RawOutputs(model.eval()), model, post).eval()


def to_torchscript(model: FaceSSD, post: PostprocessConfig) -> torch.jit.ScriptModule:
    """Trace the network (static input size, any batch), script the post-processing around it.

    torch 2.14 marks ``torch.jit`` deprecated (a FutureWarning, silenced here) in favour of
    ``torch.export``; it still works, and ``torch.jit.load`` needs nothing but torch.
    """
    model = model.eval()
    example = torch.rand(2, 3, model.input_size, model.input_size, device=model.image_mean.device)
    with warnings.catch_warnings():
        # FaceSSD's Python shape check becomes a constant in the trace: Detector checks instead.
        # torch.jit imports TracerWarning from torch.jit._trace but leaves it out of its __all__.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        # torch leaves torch.jit.trace unannotated.
        network = torch.jit.trace(_RawOutputs(model), example)  # type: ignore[no-untyped-call]
        return torch.jit.script(Detector(network, model, post))


class _RawOutputs(nn.Module):
    """FaceSSD's head outputs as a plain tuple (what tracing records)."""

    def __init__(self, model: FaceSSD) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out.cls_logits, out.bbox_regression


def export(model: FaceSSD, cfg: TrainConfig, fmt: str, out: str | Path, *, hard_nms: bool = False, source: str = "") -> Path:
    """Write the exported detector to ``out`` and its contract to ``<out>.json``.

    Raises:
        ValueError: an unknown format, or a Soft-NMS config without ``hard_nms``.
        ModuleNotFoundError: ``onnx`` format without the ``onnx`` package.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    post = cfg.postprocess
    if post.nms != "nms":
        if not hard_nms:
            raise ValueError(
                f"the config post-processes with {post.nms} Soft-NMS, which has no graph form; "
                f"pass --hard-nms to export hard NMS at IoU {post.nms_iou} instead"
            )
        post = post.model_copy(update={"nms": "nms"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    if fmt == "torchscript":
        to_torchscript(model, post).save(str(out))
    else:
        _export_onnx(build_detector(model, post), out)
    meta = {
        "format": fmt,
        "source": source,
        "backbone": cfg.model.backbone,
        "input": {
            "name": "images",
            "shape": ["B", 3, model.input_size, model.input_size],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "channels": "RGB",
            "preprocess": "resize to input_size x input_size (aspect ratio not kept, bilinear, antialiased), /255",
        },
        "outputs": {
            "boxes": "float32 (B, D, 4) xyxy in input pixels",
            "scores": "float32 (B, D) descending",
            "num_detections": "int64 (B,): rows from it on are zero padding",
        },
        "to_original_frame": "x * W / input_size, y * H / input_size",
        "max_detections": post.max_detections,
        "postprocess": post.model_dump(mode="json"),
    }
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _export_onnx(detector: Detector, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs it; checked first for a clear message)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "--format onnx needs the 'onnx' package (and 'onnxruntime' to run the result): pip install -e '.[onnx]'"
        ) from None
    size = detector.input_size
    example = torch.rand(2, 3, size, size)
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes are expected
        warnings.simplefilter("ignore")
        torch.onnx.export(
            detector,
            (example,),
            str(out),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}},
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.export_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="trainer checkpoint (best.pt / last.pt)")
    parser.add_argument("--config", type=Path, help="run config (default: the one saved in the checkpoint)")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the exported file (its contract goes to OUT.json)")
    parser.add_argument("--hard-nms", action="store_true", help="export hard NMS for a config that uses Soft-NMS")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        cfg = load_config(args.config) if args.config is not None else None
        model, cfg = model_from_checkpoint(args.checkpoint, cfg)
        path = export(model, cfg, args.format, args.out, hard_nms=args.hard_nms, source=str(args.checkpoint))
    except (FileNotFoundError, ValueError, ConfigError, ModuleNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    size = cfg.model.input_size
    print(
        f"exported {cfg.model.backbone} SSD ({args.format}) to {path}: images (B, 3, {size}, {size}) in [0, 1] -> "
        f"{', '.join(OUTPUT_NAMES)}; contract in {path.name}.json"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
