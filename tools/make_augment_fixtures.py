"""Dev-only: writes tests/fixtures/augment/ — a few small real photos and what the official
code's augmentation (timm 0.3.2, the version mlpc-ucsd/CoaT pins) and eval transform
(torchvision) make of them, for tests/test_augment.py and tests/test_transforms.py.

Run in the reference venv (never a mindcoat dependency):

    /tmp/torch/bin/pip install scikit-image      # its wheel ships the photos (no download)
    /tmp/torch/bin/python tools/make_augment_fixtures.py \
        --timm_git /work/.mirror/huggingface+pytorch-image-models/repo

timm 0.3.2's data modules are read from a git checkout of timm at the "Version 0.3.2" commit
(they only need PIL, numpy, torch, torchvision), so the installed timm's version does not matter.
Every random draw the reference makes is recorded next to its output, so the tests can replay the
same draws through mindcoat's code.

Pillow 11+ refuses ImageOps.posterize(bits=0), which timm's PosterizeIncreasing asks for at
magnitude 10; the PIL the official runs used returned a black image (its mask keeps no bit).
The reference run here restores that behaviour (see _old_pil_posterize).
"""
import argparse
import importlib.util
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

TIMM_032 = '6504a428'  # "Version 0.3.2" in timm's history
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests',
                   'fixtures', 'augment')
# (skimage file, saved name, long side): small downscaled copies, JPEG and PNG
PHOTOS = [('chelsea.png', 'chelsea.jpg', 180), ('coffee.png', 'coffee.jpg', 180),
          ('rocket.jpg', 'rocket.jpg', 180), ('astronaut.png', 'astronaut.png', 72)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_timm_module(git_dir, name):
    src = subprocess.run(['git', '-C', git_dir, 'show', f'{TIMM_032}:timm/data/{name}.py'],
                         check=True, capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f'timm032_{name}.py')
    with open(path, 'w') as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(f'timm032_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _old_pil_posterize(original):
    def posterize(image, bits):
        if bits == 0:
            return original(image, 1).point(lambda _: 0)
        return original(image, bits)
    return posterize


def write_photos():
    import skimage
    data = os.path.join(os.path.dirname(skimage.__file__), 'data')
    os.makedirs(os.path.join(OUT, 'photos'), exist_ok=True)
    for src, name, side in PHOTOS:
        img = Image.open(os.path.join(data, src)).convert('RGB')
        scale = side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        path = os.path.join(OUT, 'photos', name)
        if name.endswith('.jpg'):
            img.save(path, quality=90)
        else:
            img.save(path)


OP_SIZE = (32, 24)  # the RandAugment fixtures' image size


def op_input(name):
    """The RandAugment fixtures' input: the photo resized to OP_SIZE (bicubic)."""
    return photo(name).resize(OP_SIZE, Image.BICUBIC)


def photo(name):
    with Image.open(os.path.join(OUT, 'photos', name)) as img:
        return img.convert('RGB')


class Recorder:
    """Stands in for the ``random`` module inside timm's code: a seeded random.Random whose
    calls are logged as (method, value)."""

    def __init__(self, seed):
        self.rand = random.Random(seed)
        self.log = []

    def _record(self, method, value):
        self.log.append((method, value))
        return value

    def random(self):
        return self._record('random', self.rand.random())

    def uniform(self, a, b):
        return self._record('uniform', self.rand.uniform(a, b))

    def gauss(self, mu, sigma):
        return self._record('normal', self.rand.gauss(mu, sigma))

    def randint(self, a, b):
        return self._record('integers', self.rand.randint(a, b))

    def choice(self, seq):
        k = self.rand.randrange(len(seq))
        self._record('integers', k)
        return seq[k]


def op_cases(aa):
    """(op, magnitude, negate, resample) combinations, deduplicated by what they compute."""
    geometric = {'Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'}
    signed = geometric | {n for n in aa._RAND_INCREASING_TRANSFORMS if n.endswith('Increasing')
                          and not n.startswith(('Posterize', 'Solarize'))}
    cases = []
    for name in aa._RAND_INCREASING_TRANSFORMS:
        mags = [0.0, 3.0, 6.0, 9.0, 10.0] if name == 'PosterizeIncreasing' else [4.0, 9.0]
        if name in ('AutoContrast', 'Equalize', 'Invert'):
            mags = [9.0]
        for m in mags:
            for negate in ((False, True) if name in signed else (False,)):
                for resample in ((Image.BILINEAR, Image.BICUBIC) if name in geometric
                                 else (Image.BICUBIC,)):
                    cases.append((name, m, negate, resample))
    return cases


def rand_augment_ops(aa, out):
    """Each op at fixed magnitudes and signs on small copies of the photos (op_input())."""
    fill = tuple(min(255, round(255 * x)) for x in MEAN)
    hparams = dict(translate_const=int(OP_SIZE[1] * 0.45), img_mean=fill)
    crops = [op_input(n) for _, n, _ in PHOTOS]
    rows = []
    negate_draw = aa._randomly_negate
    for k, (name, mag, negate, resample) in enumerate(op_cases(aa)):
        aa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)
        level_fn = aa.LEVEL_TO_ARG[name]
        args = level_fn(mag, hparams) if level_fn else ()
        img = crops[k % len(crops)]
        result = aa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=resample)
        out[f'op{k}_out'] = np.asarray(result)
        rows.append((name, mag, negate, int(resample), float(args[0]) if args else np.nan,
                     k % len(crops)))
    aa._randomly_negate = negate_draw
    out['op_names'] = np.array([r[0] for r in rows])
    # magnitude, negate, PIL filter, timm's op argument, photo index
    out['op_params'] = np.array([r[1:] for r in rows], np.float64)


def rand_augment_policy(aa, out, trials=24):
    """The whole 'rand-m9-mstd0.5-inc1' policy, with its draws: np.random picks the ops, the
    ``random`` module (recorded) everything else. Bicubic as the official train_interpolation,
    and one 'random'-interpolation run."""
    fill = tuple(min(255, round(255 * x)) for x in MEAN)
    crops = [op_input(n) for _, n, _ in PHOTOS]
    for mode in ('bicubic', 'random'):
        hparams = dict(translate_const=int(OP_SIZE[1] * 0.45), img_mean=fill)
        if mode == 'bicubic':
            hparams['interpolation'] = Image.BICUBIC
        ra = aa.rand_augment_transform('rand-m9-mstd0.5-inc1', hparams)
        for t in range(trials):
            rec = Recorder(1000 + t)
            aa.random = rec
            np.random.seed(t)
            picks = np.random.choice(len(ra.ops), ra.num_layers, replace=True)
            np.random.seed(t)
            img = crops[t % len(crops)]
            result = ra(img)
            log = [('integers', int(p)) for p in picks] + rec.log
            key = f'ra_{mode}{t}'
            out[key + '_out'] = np.asarray(result)
            out[key + '_draws'] = np.array([v for _, v in log], np.float64)
            out[key + '_kinds'] = np.array([m for m, _ in log])
    aa.random = random


def random_resized_crop(tf, out, trials=30):
    """timm's RandomResizedCropAndInterpolation.get_params on the photos' sizes, with draws."""
    boxes, sizes, draws, kinds = [], [], [], []
    for t in range(trials):
        name = PHOTOS[t % len(PHOTOS)][1]
        img = photo(name)
        rec = Recorder(2000 + t)
        tf.random = rec
        scale = (0.08, 1.0) if t % 3 else (0.9, 1.0)  # the wide range also reaches the fallback
        ratio = (3 / 4, 4 / 3) if t % 5 else (0.2, 5.0)
        boxes.append(tf.RandomResizedCropAndInterpolation.get_params(img, scale, ratio))
        sizes.append(img.size + scale + ratio)
        draws.append([v for _, v in rec.log])
        kinds.append([m for m, _ in rec.log])
    tf.random = random
    out['rrc_boxes'] = np.array(boxes)
    out['rrc_args'] = np.array(sizes, np.float64)
    width = max(len(d) for d in draws)
    out['rrc_draws'] = np.array([d + [np.nan] * (width - len(d)) for d in draws])
    out['rrc_kinds'] = np.array([k + [''] * (width - len(k)) for k in kinds])


def random_erasing(re_mod, out, trials=30):
    """timm's RandomErasing('pixel', probability 0.5) on zero CHW tensors, with every draw. The
    erased box (top, left, h, w; zeros if none) and its pixels (torch's normal noise, which the
    test hands back as the noise draw) are stored."""
    import torch
    eraser = re_mod.RandomErasing(0.5, mode='pixel', device='cpu')
    for t in range(trials):
        rec = Recorder(3000 + t)
        re_mod.random = rec
        torch.manual_seed(t)
        x = torch.zeros(3, 24 + t % 3, 32 - t % 4)
        eraser(x)
        key = f're{t}'
        rows, cols = np.nonzero(x.numpy().any(axis=0))
        box = (rows.min(), cols.min(), np.ptp(rows) + 1, np.ptp(cols) + 1) if len(rows) else \
            (0, 0, 0, 0)
        out[key + '_shape'] = np.array(x.shape)
        out[key + '_box'] = np.array(box)
        out[key + '_noise'] = x.numpy()[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        out[key + '_draws'] = np.array([v for _, v in rec.log], np.float64)
        out[key + '_kinds'] = np.array([m for m, _ in rec.log])
    re_mod.random = random


def mixup(mix_mod, out, trials=12):
    """timm's Mixup(mode='batch') on random NCHW batches; the draws it makes are replayed from
    the same np.random seed (mix or not, CutMix or Mixup, lambda, box centre)."""
    import torch
    on_gpu = mix_mod.mixup_target

    def on_cpu(target, num_classes, lam=1., smoothing=0.0):  # timm's default device is 'cuda'
        return on_gpu(target, num_classes, lam, smoothing, device='cpu')

    mix_mod.mixup_target = on_cpu
    configs = [dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0), dict(mixup_alpha=0.8,
               cutmix_alpha=0.0, prob=1.0), dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=0.6)]
    for t in range(trials):
        cfg = configs[t % len(configs)]
        m = mix_mod.Mixup(label_smoothing=0.1, num_classes=5, mode='batch', **cfg)
        gen = torch.Generator().manual_seed(t)
        x = torch.randn(4, 2, 6, 8, generator=gen)
        y = torch.tensor([0, 3, 1, 4])
        np.random.seed(t)
        lam, use_cutmix = m._params_per_batch()
        raw_lam, box, centre = lam, (0, 0, 0, 0), (0, 0)
        if use_cutmix and lam != 1.0:
            state = np.random.get_state()
            centre = (np.random.randint(0, x.shape[2]), np.random.randint(0, x.shape[3]))
            np.random.set_state(state)
            box, lam = mix_mod.cutmix_bbox_and_lam(x.shape, lam)
            box = tuple(int(v) for v in box)
        np.random.seed(t)
        xo, yo = m(x.clone(), y.clone())
        key = f'mix{t}'
        out[key + '_x'] = x.numpy()
        out[key + '_y'] = y.numpy()
        out[key + '_xo'] = xo.numpy()
        out[key + '_yo'] = yo.numpy()
        # lambda (corrected), CutMix?, box y0 y1 x0 x1, raw lambda, box centre (y, x)
        out[key + '_params'] = np.array([lam, float(use_cutmix)] + list(box) + [raw_lam]
                                        + list(centre), np.float64)


def eval_transform(out):
    """torchvision's eval pipeline of the official src/datasets.py (Resize(int(256/224*size),
    bicubic) -> CenterCrop -> ToTensor -> Normalize), plus timm's crop_pct/squash options."""
    from torchvision import transforms as T
    cases = [(n, 64, 256 / 224 * 64, 'center') for _, n, _ in PHOTOS]
    cases += [(PHOTOS[0][1], 96, 96 / 0.9, 'center'), (PHOTOS[2][1], 64, 64 / 1.0, 'squash'),
              (PHOTOS[1][1], 32, 256 / 224 * 32, 'center')]
    for k, (name, size, scale, mode) in enumerate(cases):
        resize = T.Resize(int(scale), interpolation=T.InterpolationMode.BICUBIC) \
            if mode == 'center' else T.Resize((int(scale), int(scale)),
                                              interpolation=T.InterpolationMode.BICUBIC)
        cropped = T.CenterCrop(size)(resize(photo(name)))
        tensor = T.Normalize(MEAN, STD)(T.ToTensor()(cropped))
        key = f'eval{k}'
        out[key + '_crop'] = np.asarray(cropped)
        out[key + '_case'] = np.array([name, str(size), repr(size / scale), mode])
        if size == 32:
            out[key + '_tensor'] = tensor.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--timm_git', required=True, help='a git dir of timm (with its history)')
    args = parser.parse_args()
    ImageOps.posterize = _old_pil_posterize(ImageOps.posterize)
    aa = load_timm_module(args.timm_git, 'auto_augment')
    aa.ImageOps.posterize = ImageOps.posterize
    tf = load_timm_module(args.timm_git, 'transforms')
    re_mod = load_timm_module(args.timm_git, 'random_erasing')
    mix_mod = load_timm_module(args.timm_git, 'mixup')
    write_photos()
    outputs = {}
    rand_augment_ops(aa, outputs)
    rand_augment_policy(aa, outputs)
    random_resized_crop(tf, outputs)
    random_erasing(re_mod, outputs)
    mixup(mix_mod, outputs)
    eval_transform(outputs)
    path = os.path.join(OUT, 'reference.npz')
    np.savez_compressed(path, **outputs)
    print(f'wrote {path} ({os.path.getsize(path) / 1024:.0f} KB) and {len(PHOTOS)} photos '
          f'(Python {sys.version.split()[0]}; posterize(bits=0) as old PIL: black)')


if __name__ == '__main__':
    main()
