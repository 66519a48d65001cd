"""The epoch report: the one flat dict a run yields per epoch, its keys and what they mean.

Every reader of a report (the health monitor, the search's trainable and tracking, the stage
detector, the figures, production training's history) takes the key from here; nothing else spells
them. Keys are ``<group>/<name>`` so that MLflow and TensorBoard group them; ``epoch`` and ``step``
are bare. Imports nothing heavy: the report CLI and the driver's callback read it without torch.
"""

from __future__ import annotations

from typing import Literal, TypedDict

# -- position ------------------------------------------------------------------------------------
EPOCH = "epoch"  #: 1-based epoch this report closes
STEP = "step"  #: optimiser steps taken so far (global)

# -- training: means over the epoch's steps unless said otherwise ---------------------------------
TRAIN_LOSS = "train/loss"  #: the weighted loss the optimiser saw: class_weight*cls + box_weight*box
TRAIN_LOSS_CLS = "train/loss_cls"  #: classification loss, unweighted
TRAIN_LOSS_BOX = "train/loss_box"  #: box regression loss, unweighted
TRAIN_GRAD_NORM = "train/grad_norm"  #: gradient norm before clipping
TRAIN_POS_ANCHORS = "train/pos_anchors_per_image"  #: anchors matched to a face, per image
TRAIN_EMPTY_BATCHES = "train/batches_without_positives"  #: batches (a count) with no matched anchor
TRAIN_LR = "train/lr"  #: learning rate at the epoch's end
TRAIN_CLASS_WEIGHT = "train/class_weight"  #: class weight applied at the epoch's last step (the ramp moves it)
TRAIN_BOX_WEIGHT = "train/box_weight"  #: box weight applied at the epoch's last step
TRAIN_IMAGES = "train/images"  #: training images seen this epoch (a count)
TRAIN_IMAGES_PER_S = "train/images_per_s"  #: training throughput, validation excluded

# -- validation (zeros when the run stopped before it could validate) ------------------------------
VAL_AP = "val/ap"  #: VOC-style AP over all faces (our metric, not the official WIDER protocol)
VAL_PRECISION = "val/precision"  #: at eval.score_threshold
VAL_RECALL = "val/recall"
VAL_TP = "val/tp"
VAL_FP = "val/fp"
VAL_FN = "val/fn"
VAL_MEAN_IOU = "val/mean_iou"  #: of the true positives
VAL_NUM_GT = "val/num_gt"
VAL_NUM_IMAGES = "val/num_images"
VAL_DETECTIONS_PER_IMAGE = "val/detections_per_image"
VAL_TOP_SCORE = "val/top_score"  #: mean over images of the highest face score
VAL_TOP_SCORE_SPREAD = "val/top_score_spread"  #: its spread across images (a constant predictor: ~0)
# The official WIDER FACE protocol (model.widerface_eval) on the same detections, when the config
# says eval.wider_ap: true (the data must have the official .mat ground truth; zeros, as above, when
# the run stopped before validating); None otherwise, a value every consumer skips (tracking logs
# finite numbers only, so a search can optimise them only with the option on). Per epoch on the seeded subset of
# eval.wider_subset val images, the same images every epoch and in every trial of a search; at the
# last epoch (epoch == epochs) on all of val, so the last value is the official number.
VAL_WIDER_EASY = "val/wider_easy"  #: official AP, easy setting
VAL_WIDER_MEDIUM = "val/wider_medium"  #: official AP, medium setting
VAL_WIDER_HARD = "val/wider_hard"  #: official AP, hard setting (every face, the tiny ones too)
VAL_WIDER_IMAGES = "val/wider_images"  #: images the three were computed on: the subset's size, or all of val

# -- time and health -------------------------------------------------------------------------------
EPOCH_SECONDS = "time/epoch_s"  #: wall clock of the epoch, validation included
HEALTH_DIAGNOSIS = "health/diagnosis"  #: a label of model.health.LABELS ("healthy" when fine)
HEALTH_CODE = "health/code"  #: the label's index in LABELS (metric stores want numbers)
HEALTH_STOP = "health/stop"  #: 1.0 when the monitor stopped the run, else 0.0
HEALTH_MESSAGE = "health/message"  #: the diagnosis with its evidence ("" when healthy)
HEALTH_RECOVERIES = "health/recoveries"  #: recoveries (rollbacks) made so far in the run (model/recovery.py)
HEALTH_RECOVERY = "health/recovery"  #: this epoch's recovery event: what, from which snapshot, which change ("" when none)
HEALTH_RECOVERED_FROM = "health/recovered_from"  #: the diagnosis the latest recovery fixed ("" when none)

TRAIN_KEYS = (TRAIN_LOSS, TRAIN_LOSS_CLS, TRAIN_LOSS_BOX, TRAIN_GRAD_NORM, TRAIN_POS_ANCHORS, TRAIN_EMPTY_BATCHES,
              TRAIN_LR, TRAIN_CLASS_WEIGHT, TRAIN_BOX_WEIGHT, TRAIN_IMAGES, TRAIN_IMAGES_PER_S)  # fmt: skip
#: The official protocol's keys among them (``None`` in a report whose config does not compute them).
VAL_WIDER_KEYS = (VAL_WIDER_EASY, VAL_WIDER_MEDIUM, VAL_WIDER_HARD, VAL_WIDER_IMAGES)
VAL_KEYS = (VAL_AP, VAL_PRECISION, VAL_RECALL, VAL_TP, VAL_FP, VAL_FN, VAL_MEAN_IOU, VAL_NUM_GT, VAL_NUM_IMAGES,
            VAL_DETECTIONS_PER_IMAGE, VAL_TOP_SCORE, VAL_TOP_SCORE_SPREAD, *VAL_WIDER_KEYS)  # fmt: skip
HEALTH_KEYS = (HEALTH_DIAGNOSIS, HEALTH_CODE, HEALTH_STOP, HEALTH_MESSAGE, HEALTH_RECOVERIES, HEALTH_RECOVERY,
               HEALTH_RECOVERED_FROM)  # fmt: skip
#: Every key of a report, in report order.
REPORT_KEYS = (EPOCH, STEP, *TRAIN_KEYS, *VAL_KEYS, EPOCH_SECONDS, *HEALTH_KEYS)

#: The report's metrics a search may optimise, with their only sensible direction. Training losses
#: are left out on purpose: with sampled loss weights, minimising the loss drives the weights to 0.
METRIC_MODES: dict[str, Literal["max", "min"]] = {
    VAL_AP: "max",
    VAL_PRECISION: "max",
    VAL_RECALL: "max",
    VAL_MEAN_IOU: "max",
    VAL_TP: "max",
    VAL_FP: "min",
    VAL_FN: "min",
    # Only where the space's fixed settings turn eval.wider_ap on (hpo/space.py checks it).
    VAL_WIDER_EASY: "max",
    VAL_WIDER_MEDIUM: "max",
    VAL_WIDER_HARD: "max",
}

#: The same keys as a type (spelled out: type checkers read only literal keys; a test checks that
#: they equal REPORT_KEYS).
EpochReport = TypedDict(
    "EpochReport",
    {
        "epoch": int,
        "step": int,
        "train/loss": float,
        "train/loss_cls": float,
        "train/loss_box": float,
        "train/grad_norm": float,
        "train/pos_anchors_per_image": float,
        "train/batches_without_positives": float,
        "train/lr": float,
        "train/class_weight": float,
        "train/box_weight": float,
        "train/images": int,
        "train/images_per_s": float,
        "val/ap": float,
        "val/precision": float,
        "val/recall": float,
        "val/tp": float,
        "val/fp": float,
        "val/fn": float,
        "val/mean_iou": float,
        "val/num_gt": float,
        "val/num_images": float,
        "val/detections_per_image": float,
        "val/top_score": float,
        "val/top_score_spread": float,
        "val/wider_easy": float | None,
        "val/wider_medium": float | None,
        "val/wider_hard": float | None,
        "val/wider_images": float | None,
        "time/epoch_s": float,
        "health/diagnosis": str,
        "health/code": float,
        "health/stop": float,
        "health/message": str,
        "health/recoveries": float,
        "health/recovery": str,
        "health/recovered_from": str,
    },
)

#: The official WIDER FACE protocol's AP per setting (``model.widerface_eval``): the epoch report's
#: keys, also those production training logs once a run ends (its best checkpoint on all of val).
WIDER_AP = {"easy": VAL_WIDER_EASY, "medium": VAL_WIDER_MEDIUM, "hard": VAL_WIDER_HARD}
