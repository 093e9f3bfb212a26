"""Per-image transforms on PIL images, as the official CoaT code builds them (timm 0.3.2 for
training, torchvision for evaluation), every random draw from a ``np.random.Generator``.

Train: RandomResizedCrop(scale, ratio) -> horizontal flip -> vertical flip (MindCV's vflip) ->
RandAugment (or ColorJitter when auto_augment is off) -> ToTensor + Normalize -> RandomErasing
(after normalize; timm's box and 'pixel' fill in the official recipes, MindSpore's box and fill as
MindCV's YAMLs leave them).
Eval (official src/datasets.py): resize the short side to int(size / crop_pct) (crop_pct 0.875:
256 for 224, 438 for 384) with PIL bicubic (antialiased), center crop, ToTensor + Normalize.
crop_mode 'squash' resizes both sides to int(size / crop_pct) instead (timm's option).

Both return CHW float32 arrays.
"""
import functools
import math

import numpy as np
from PIL import Image, ImageEnhance

from .augment import PIL_INTERPOLATION, RANDOM_INTERPOLATION, RandAugment, parse_rand_augment

INTERPOLATIONS = tuple(PIL_INTERPOLATION) + ('random',)


def pil_interpolation(name, allow_random=True):
    """'bicubic' -> Image.BICUBIC; 'random' (timm: bilinear or bicubic per image) stays a string."""
    key = str(name).lower()
    if key == 'random' and allow_random:
        return 'random'
    if key == 'random':  # as timm's eval transform: no random resampling there
        return Image.BILINEAR
    try:
        return PIL_INTERPOLATION[key]
    except KeyError:
        raise ValueError(f"unknown interpolation '{name}'; choose one of "
                         f"{', '.join(INTERPOLATIONS)}") from None


def to_tensor(img, mean, std):
    """PIL image -> normalised CHW float32: torchvision's ToTensor then Normalize in float32, read
    from a 256-entry table per channel (the same float32 arithmetic, done once per value)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] != len(mean):
        raise ValueError(f"{arr.shape[2]}-channel image, {len(mean)}-value mean/std")
    table = _normalize_table(tuple(mean), tuple(std))
    return table[np.arange(len(mean))[:, None, None], arr.transpose(2, 0, 1)]


@functools.lru_cache(maxsize=8)
def _normalize_table(mean, std):
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)
    mean = np.asarray(mean, np.float32)[:, None]
    std = np.asarray(std, np.float32)[:, None]
    return (values - mean) / std


# --- eval -------------------------------------------------------------------------------------

def resize_short_side(img, size, resample):
    """torchvision's Resize(int) on a PIL image: the short side becomes ``size``, the long side
    int(size * long / short)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), resample)


def center_crop(img, size):
    """torchvision's CenterCrop (rounding as it does; images smaller than ``size`` are padded
    with black)."""
    w, h = img.size
    if size > w or size > h:
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


class EvalTransform:
    """``EvalTransform(settings)(pil_image) -> CHW float32``."""

    def __init__(self, settings):
        self.size = settings.image_size
        self.scale_size = int(math.floor(self.size / settings.crop_pct))
        self.squash = settings.crop_mode == 'squash'
        self.resample = pil_interpolation(settings.interpolation, allow_random=False)
        self.mean, self.std = settings.mean, settings.std

    def __call__(self, img, rng=None):
        if self.squash:
            img = img.resize((self.scale_size, self.scale_size), self.resample)
        else:
            img = resize_short_side(img, self.scale_size, self.resample)
        return to_tensor(center_crop(img, self.size), self.mean, self.std)


# --- train ------------------------------------------------------------------------------------

def random_resized_crop_box(width, height, scale, ratio, rng):
    """timm's RandomResizedCropAndInterpolation.get_params: (top, left, h, w) of the crop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if w <= width and h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop of the allowed aspect range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(img, strength, rng):
    """torchvision's ColorJitter(b, c, s) with one strength: brightness, contrast and saturation
    factors uniform in [max(0, 1 - s), 1 + s], applied in a random order."""
    kinds = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = [rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in kinds]
    for k in rng.permutation(len(kinds)):
        img = kinds[k](img).enhance(factors[k])
    return img


def random_erasing(x, prob, rng, area=(0.02, 1 / 3), min_aspect=0.3, *, aspect=None,
                   value='random', max_attempts=10, sampling='timm'):
    """Random erasing on a normalised CHW float32 array (in place): with probability ``prob`` one
    box of area fraction uniform in ``area`` is filled with ``value``, written as is into the
    normalised image: a number (0 is the mean pixel), one number per channel, or 'random'
    (per-pixel N(0, 1) noise). ``max_attempts`` boxes are drawn until one fits; else the image is
    unchanged. The box follows ``sampling``:

    - 'timm' (timm's RandomErasing, the official recipe's): aspect log-uniform in ``aspect``
      (default (min_aspect, 1 / min_aspect)), h = round(sqrt(area * aspect)),
      w = round(sqrt(area / aspect));
    - 'mindspore' (mindspore.dataset.vision.RandomErasing, which MindCV uses): aspect uniform in
      ``aspect``, w = round(sqrt(area * aspect)), h = round(w / aspect).

    Either way the box must be smaller than the image and its top-left corner is uniform over the
    places it fits. With the default arguments this is timm's mode 'pixel', count 1."""
    if rng.random() > prob:
        return x
    chans, height, width = x.shape
    lo, hi = aspect if aspect is not None else (min_aspect, 1 / min_aspect)
    for _ in range(max_attempts):
        target_area = rng.uniform(*area) * height * width
        if sampling == 'timm':
            ratio = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            h = int(round(math.sqrt(target_area * ratio)))
            w = int(round(math.sqrt(target_area / ratio)))
        else:
            ratio = rng.uniform(lo, hi)
            w = int(round(math.sqrt(target_area * ratio)))
            h = int(round(w / ratio))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            x[:, top:top + h, left:left + w] = _erase_fill(value, (chans, h, w), rng)
            break
    return x


def _erase_fill(value, shape, rng):
    if isinstance(value, str):  # 'random' (checked by the config)
        return rng.standard_normal(shape, np.float32)
    if isinstance(value, (list, tuple)):
        if len(value) != shape[0]:
            raise ValueError(f"re_value has {len(value)} values for {shape[0]}-channel images")
        return np.asarray(value, np.float32)[:, None, None]
    return np.float32(value)


class TrainTransform:
    """``TrainTransform(settings, aug)(pil_image, rng) -> CHW float32``; ``aug`` holds the
    augmentation keys (scale, ratio, hflip, vflip, color_jitter, auto_augment, re_prob, re_scale,
    re_ratio, re_value, re_max_attempts, re_sampling)."""

    def __init__(self, settings, aug):
        self.size = settings.image_size
        self.scale, self.ratio = tuple(aug.scale), tuple(aug.ratio)
        self.hflip = float(aug.hflip)
        self.interpolation = pil_interpolation(settings.interpolation)
        self.mean, self.std = settings.mean, settings.std
        self.rand_augment = None
        self.jitter = float(aug.color_jitter or 0.0)
        if aug.auto_augment and str(aug.auto_augment).lower() != 'none':
            fill = tuple(min(255, round(255 * m)) for m in settings.mean)
            self.rand_augment = RandAugment(parse_rand_augment(aug.auto_augment), fill,
                                            self.interpolation)
        self.vflip = float(aug.vflip)
        self.re_prob = float(aug.re_prob)
        self.erasing = dict(area=tuple(aug.re_scale), aspect=tuple(aug.re_ratio),
                            value=aug.re_value, max_attempts=int(aug.re_max_attempts),
                            sampling=aug.re_sampling)

    def _resample(self, rng):
        if self.interpolation == 'random':
            return RANDOM_INTERPOLATION[rng.integers(0, 2)]
        return self.interpolation

    def __call__(self, img, rng):
        top, left, h, w = random_resized_crop_box(img.size[0], img.size[1], self.scale,
                                                  self.ratio, rng)
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size),
                                                              self._resample(rng))
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.vflip > 0 and rng.random() < self.vflip:  # MindCV: RandomVerticalFlip after hflip
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if self.rand_augment is not None:
            img = self.rand_augment(img, rng)
        elif self.jitter > 0:
            img = color_jitter(img, self.jitter, rng)
        x = to_tensor(img, self.mean, self.std)
        if self.re_prob > 0:
            random_erasing(x, self.re_prob, rng, **self.erasing)
        return x

