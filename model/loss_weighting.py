"""How the classification and box parts of the loss are weighted step by step (``weighting.method``).

The loss returns its parts unweighted; the trainer asks a :class:`LossWeighting` for the step's
weights, given the configured ones (``loss.class_weight``, ``loss.box_weight``, after the optional
ramp of ``model.engine.loss_weights_at``):

* ``fixed``: the configured weights, as they are.
* ``uncertainty``: Kendall, Gal & Cipolla (2018). Learnable log-variances ``s_i``, one per part,
  trained by the optimiser with the network: the minimised loss is
  ``sum_i w_i exp(-s_i) L_i + s_i``, so a part whose loss stays large gets a smaller weight and the
  ``+ s_i`` term stops every weight from going to 0. ``s_i`` start at 0: step 1 is the fixed run's.
* ``loss_ratio``: a gradient-free controller. The box weight is set each step so that the weighted
  box part is ``box_weight / class_weight`` times the weighted classification part, judged on
  running means of the two losses (``ratio_momentum``): a search's box weight then samples a
  balance between the parts rather than a scale that the box loss's own size (smooth-L1 vs IoU
  losses differ ~2x; on the mini set it falls ~5x in training) silently changes.

Why not GradNorm (Chen et al. 2018): it balances the parts' gradient norms on a shared layer,
which needs each part's gradient there every step, i.e. extra backward passes through the
network (``autograd.grad`` per part, with a graph to differentiate the norms again). On the CPU
the backward pass is most of a training step, so that is paid on every step of every trial; the
loss-ratio controller costs two running means. For the SSD there is also no single shared layer
near the heads: they sit on several feature levels of the backbone.

The reported weights (``train/class_weight``, ``train/box_weight``) are the effective ones:
``w_i exp(-s_i)`` for uncertainty weighting, the controller's for ``loss_ratio``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["LossWeighting", "build_loss_weighting"]

Method = Literal["fixed", "uncertainty", "loss_ratio"]


class LossWeighting(nn.Module):
    """The step's weights and what is added to the weighted loss. ``fixed`` keeps Python floats:
    the same arithmetic as before dynamic weighting existed (exact resume of old checkpoints)."""

    # The buffer ``loss_ratio`` registers in __init__, declared for the type checker only (the
    # class itself stays unannotated at runtime, as FaceSSD's and the exported Detector's).
    if TYPE_CHECKING:
        running: Tensor

    def __init__(self, method: Method = "fixed", ratio_momentum: float = 0.9) -> None:
        super().__init__()
        self.method = method
        self.ratio_momentum = ratio_momentum
        if method == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(2))  # s_cls, s_box
        if method == "loss_ratio":
            # Running means of the unweighted parts; 0 = not yet seen (the first step sets them).
            self.register_buffer("running", torch.zeros(2))

    def weights(self, losses: dict[str, Tensor], class_weight: float, box_weight: float) -> tuple[Any, Any]:
        """``(class_weight, box_weight)`` to apply this step: floats, or tensors on the loss's device
        (no host sync); uncertainty weights carry gradient to ``log_vars``."""
        if self.method == "uncertainty":
            scale = torch.exp(-self.log_vars)
            return class_weight * scale[0], box_weight * scale[1]
        if self.method == "loss_ratio":
            parts = torch.stack([losses["loss_cls"].detach(), losses["loss_box"].detach()]).float()
            with torch.no_grad():
                first = self.running.eq(0)  # per part: a box loss first seen after a batch without faces
                mixed = self.ratio_momentum * self.running + (1 - self.ratio_momentum) * parts
                self.running.copy_(torch.where(first, parts, mixed))
            if class_weight == 0:
                return class_weight, box_weight  # nothing to balance against
            # A batch without positives has no box loss: keep the ratio finite.
            gain = self.running[0] / self.running[1].clamp_min(1e-8)
            return class_weight, box_weight * gain
        return class_weight, box_weight

    def regulariser(self) -> Tensor | float:
        """Added to the minimised loss (not to the reported ``loss``): uncertainty's ``sum s_i``."""
        return self.log_vars.sum() if self.method == "uncertainty" else 0.0

    def param_group(self) -> dict[str, Any] | None:
        """The optimiser group of the learnable weights (none for the other methods). No weight
        decay: it would pull ``s_i`` to 0, i.e. back to the fixed weights. No SGD momentum: with
        the network's 0.9, a box weight of 10 drove ``s_box`` to 6.4 by step 45 where its balance
        was ~4.1, leaving the box part ~10x under-weighted for two epochs (bench/loss_weighting.py);
        plain steps approach the balance without overshooting it (AdamW ignores the key)."""
        if self.method != "uncertainty":
            return None
        return {"params": [self.log_vars], "weight_decay": 0.0, "momentum": 0.0}


def build_loss_weighting(method: Method, ratio_momentum: float = 0.9) -> LossWeighting:
    return LossWeighting(method, ratio_momentum)
