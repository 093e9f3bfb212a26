"""timm 0.3.2's Mixup/CutMix in 'batch' mode (what the official CoaT trainer runs), in numpy.

One draw per batch: with probability ``prob`` the batch is mixed, by CutMix with probability
``switch_prob`` (when both are on) else Mixup; lambda ~ Beta(alpha, alpha); image i is mixed with
image B-1-i (the batch flipped). CutMix pastes one box (side sqrt(1 - lambda) of the image, centre
uniform, clipped at the borders) and corrects lambda to the pasted area. Targets: label-smoothed
one-hots mixed with the same lambda. Every draw comes from the ``np.random.Generator`` passed in.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixParams:
    lam: float = 1.0          # weight of the batch itself (1.0: not mixed)
    box: tuple = None         # CutMix (y0, y1, x0, x1); None for Mixup


def smooth_one_hot(labels, num_classes, smoothing):
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, np.float32)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return out


def cutmix_box(height, width, lam, rng):
    """timm's rand_bbox + lambda correction: ((y0, y1, x0, x1), lambda of the pasted area)."""
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    return cutmix_box_at(height, width, lam, cy, cx)


def cutmix_box_at(height, width, lam, cy, cx):
    """The box of side sqrt(1 - lam) centred at (cy, cx), clipped, and its corrected lambda."""
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    box = (int(y0), int(y1), int(x0), int(x1))
    return box, 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / float(height * width)


class BatchMix:
    """``BatchMix(mixup, cutmix, prob, switch_prob, smoothing, num_classes)(images, labels, rng)``
    -> (mixed NCHW float32 images, soft targets). With both alphas 0 it only smooths labels."""

    def __init__(self, mixup=0.0, cutmix=0.0, prob=1.0, switch_prob=0.5, smoothing=0.0,
                 num_classes=1000):
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.smoothing, self.num_classes = float(smoothing), int(num_classes)

    @property
    def enabled(self):
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def draw(self, height, width, rng):
        """The batch's MixParams, as timm's _params_per_batch + cutmix_bbox_and_lam."""
        if not self.enabled or rng.random() >= self.prob:
            return MixParams()
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixParams(lam)
        if lam == 1.0:  # timm returns before drawing a box
            return MixParams()
        box, lam = cutmix_box(height, width, lam, rng)
        return MixParams(lam, box)

    def apply(self, images, labels, params):
        """Mixes ``images`` (in place) and returns (images, targets)."""
        targets = smooth_one_hot(labels, self.num_classes, self.smoothing)
        if params.lam == 1.0:
            return images, targets
        if params.box is not None:
            y0, y1, x0, x1 = params.box
            images[:, :, y0:y1, x0:x1] = images[::-1, :, y0:y1, x0:x1].copy()
        else:
            flipped = images[::-1] * np.float32(1.0 - params.lam)
            images *= np.float32(params.lam)
            images += flipped
        lam = np.float32(params.lam)
        targets = targets * lam + targets[::-1] * np.float32(1.0 - params.lam)
        return images, targets

    def __call__(self, images, labels, rng):
        return self.apply(images, labels, self.draw(images.shape[2], images.shape[3], rng))
