"""MMDetection's test pipeline for these detectors, as functions: decode, keep-ratio resize,
normalise, pad. Host-side NumPy (it runs once per image, before the graph).

mmcv reads files with OpenCV (BGR, EXIF orientation applied) and resizes with OpenCV's
bilinear; here the file is decoded with PIL (EXIF orientation applied, RGB) and resized with
``ops.detection.resize_bilinear``, which equals OpenCV's INTER_LINEAR bit for bit. Normalisation
is mmdet's and mmcv's (OpenCV's arithmetic): x - mean in float32, times the float64 reciprocal
of the float32 std, rounded to float32; RGB order when ``to_rgb`` (the official setting), BGR
otherwise.
"""
import math
from dataclasses import dataclass

import numpy as np

from ...errors import DataError
from ...ops.detection import rescale_size, resize_bilinear
from .settings import PipelineSettings

F32 = np.float32


@dataclass(frozen=True)
class ImageMeta:
    """What the post-processing needs to know about one preprocessed image: its decoded size,
    the resized size (before padding), the padded size (H, W, C each) and the scale factor
    (w_scale, h_scale, w_scale, h_scale) from the decoded image to the resized one."""
    ori_shape: tuple
    img_shape: tuple
    pad_shape: tuple
    scale_factor: np.ndarray


@dataclass(frozen=True)
class DetInput:
    """A batch for the detector: ``tensor`` float32 (B, 3, H, W) and one ImageMeta per image."""
    tensor: np.ndarray
    metas: tuple


def load_image(path):
    """An image file as RGB uint8 (H, W, 3), EXIF orientation applied as OpenCV's imread does.
    A file that cannot be decoded is a one-line DataError."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert('RGB'))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def resized_size(w, h, settings):
    """(new_w, new_h) and the resize factor of an image of w x h: mmcv's keep-ratio size within
    img_scale, made smaller still when a fixed canvas could not hold it."""
    (new_w, new_h), factor = rescale_size(w, h, settings.img_scale)
    if settings.canvas is not None:
        canvas_h, canvas_w = settings.canvas
        if new_w > canvas_w or new_h > canvas_h:
            factor = min(factor, canvas_w / w, canvas_h / h)
            new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
            new_w, new_h = min(new_w, canvas_w), min(new_h, canvas_h)
    return (max(new_w, 1), max(new_h, 1)), factor


def padded_shape(new_w, new_h, settings):
    """(pad_h, pad_w) of a resized image: the fixed canvas, else the next multiples of
    size_divisor. One graph is compiled per padded shape."""
    if settings.canvas is not None:
        return tuple(settings.canvas)
    div = settings.size_divisor
    return int(math.ceil(new_h / div)) * div, int(math.ceil(new_w / div)) * div


def image_size(path):
    """(w, h) of an image file as ``load_image`` gives it (EXIF orientation applied), from its
    header alone; None if the header cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # only a hint for ordering: load_image reports a bad file in one line
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # the orientations that turn 90


def normalize(image, mean, std, to_rgb=True):
    """mmcv.imnormalize on an RGB uint8 image, channels in RGB order if ``to_rgb`` else BGR
    (mean/std given in that order)."""
    img = image.astype(F32)
    if not to_rgb:
        img = img[..., ::-1]
    # mmdet's Normalize keeps mean and std as float32; cv2.subtract works in float32,
    # cv2.multiply scales by the float64 reciprocal of that std and rounds to float32
    centred = img - np.asarray(mean, F32)
    stdinv = 1 / np.asarray(std, F32).astype(np.float64)
    return (centred.astype(np.float64) * stdinv).astype(F32)


def preprocess(image, settings=None):
    """One RGB uint8 image (H, W, 3) -> (float32 (3, Hp, Wp), ImageMeta): resize, normalise,
    pad (to a multiple of ``size_divisor``, or to the fixed ``canvas``)."""
    settings = settings or PipelineSettings()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise DataError(f"detector input must be an RGB uint8 image (H, W, 3), got "
                        f"{image.dtype} {image.shape}")
    h, w = image.shape[:2]
    (new_w, new_h), _ = resized_size(w, h, settings)
    resized = resize_bilinear(image, (new_w, new_h))
    # mmdet keeps the per-axis ratio of the sizes, not the resize factor itself
    scale_factor = np.array([new_w / w, new_h / h, new_w / w, new_h / h], F32)
    img = normalize(resized, settings.mean, settings.std, settings.to_rgb)
    pad_h, pad_w = padded_shape(new_w, new_h, settings)
    padded = np.zeros((3, pad_h, pad_w), F32)
    padded[:, :new_h, :new_w] = img.transpose(2, 0, 1)
    meta = ImageMeta(ori_shape=(h, w, 3), img_shape=(new_h, new_w, 3),
                     pad_shape=(pad_h, pad_w, 3), scale_factor=scale_factor)
    return padded, meta


def collate(items):
    """A DetInput from (tensor, meta) pairs of one padded shape (the fixed canvas gives every
    image the same; with /32 padding, batch images of one size or one image at a time)."""
    items = list(items)
    shapes = {t.shape for t, _ in items}
    if len(shapes) != 1:
        raise DataError(f"images of one batch must share a padded shape, got "
                        f"{sorted(shapes)}; use a fixed canvas or one image per batch")
    return DetInput(np.stack([t for t, _ in items]), tuple(m for _, m in items))
