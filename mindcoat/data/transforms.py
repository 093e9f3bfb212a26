"""Per-image transforms (after decoding to HWC uint8), built from mindspore.dataset.vision.

Train (DeiT/CoaT recipe): RandomResizedCrop(scale, ratio) -> horizontal flip -> RandAugment (or
ColorJitter when auto_augment is off) -> Normalize -> HWC2CHW -> RandomErasing (per-pixel noise).
Eval: resize the short side to size / crop_pct -> center crop (crop_mode 'squash': resize both
sides to size / crop_pct, as the 384 model) -> Normalize -> HWC2CHW.
"""
import re

import mindspore.dataset.vision as vision

INTERPOLATION = {'bicubic': vision.Inter.BICUBIC, 'bilinear': vision.Inter.BILINEAR,
                 'nearest': vision.Inter.NEAREST, 'area': vision.Inter.AREA}
RAND_FILL = (124, 116, 104)  # timm's fill for RandAugment: the ImageNet mean pixel


def interpolation_mode(name):
    try:
        return INTERPOLATION[name.lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation '{name}'; choose one of "
                         f"{', '.join(INTERPOLATION)}") from None


def to_pixel_scale(values):
    """Mean/std given on the 0-1 scale (timm, the model's default_cfg) become 0-255 (MindCV)."""
    values = [float(v) for v in values]
    return values if max(values) > 1.0 else [v * 255.0 for v in values]


def parse_rand_augment(spec):
    """'rand-m9-mstd0.5-inc1' -> (num_ops, magnitude out of 10). mindspore's RandAugment is the
    torchvision op set: the magnitude noise (mstd) and the 'increasing' flag have no counterpart
    there and are accepted but not applied."""
    parts = spec.split('-')
    if parts[0] != 'rand':
        raise ValueError(f"auto_augment '{spec}': only RandAugment specs ('rand-m9-...') are "
                         f"supported")
    num_ops, magnitude = 2, 10
    for part in parts[1:]:
        key, value = re.match(r'([a-z]+)([\d.]+)$', part).groups() if re.match(
            r'([a-z]+)([\d.]+)$', part) else (part, None)
        if key == 'm':
            magnitude = int(float(value))
        elif key == 'n':
            num_ops = int(value)
        elif key not in ('mstd', 'inc', 'mmax', 'w', 'p'):
            raise ValueError(f"auto_augment '{spec}': unknown part '{part}'")
    return num_ops, magnitude


def create_transforms(is_training, image_size=224, crop_pct=0.9, crop_mode='center',
                      interpolation='bicubic', mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), scale=(0.08, 1.0), ratio=(0.75, 1.3333333),
                      hflip=0.5, color_jitter=0.4, auto_augment='rand-m9-mstd0.5-inc1',
                      re_prob=0.25):
    """The transform list for ``dataset.map(operations=..., input_columns='image')``."""
    inter = interpolation_mode(interpolation)
    normalize = [vision.Normalize(to_pixel_scale(mean), to_pixel_scale(std)), vision.HWC2CHW()]
    if not is_training:
        resize = int(image_size / crop_pct) if crop_pct else image_size
        if crop_mode == 'squash':
            ops = [vision.Resize((resize, resize), inter)]
        else:
            ops = [vision.Resize(resize, inter)]
        return ops + [vision.CenterCrop(image_size)] + normalize
    ops = [vision.RandomResizedCrop(image_size, scale=tuple(scale), ratio=tuple(ratio),
                                    interpolation=inter)]
    if hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=hflip))
    if auto_augment and str(auto_augment).lower() != 'none':
        num_ops, magnitude = parse_rand_augment(auto_augment)
        ops.append(vision.RandAugment(num_ops=num_ops, magnitude=magnitude,
                                      num_magnitude_bins=11, interpolation=inter,
                                      fill_value=RAND_FILL))
    elif color_jitter:
        ops.append(vision.RandomColorAdjust(color_jitter, color_jitter, color_jitter))
    ops += normalize
    if re_prob > 0:
        ops.append(vision.RandomErasing(prob=re_prob, value='random'))
    return ops
