"""Classify image files with a CoaT model and print the top-k classes per image.

    python -m mindcoat.predict --model coat_lite_tiny --ckpt_path W.ckpt cat.jpg dog.png

Images go through the variant's eval transform (the one validate.py uses). The number of classes
(and, from a mindcoat training checkpoint, the model, its overrides, the eval settings and the
class names) come from the checkpoint; a --num_classes that contradicts it is refused. Names:
``--labels FILE`` (one per line, class-index order), else the checkpoint's, else ImageNet-1k's
for a 1000-class model, else class indices only. Only regular files are opened. An unreadable
image is reported on one line and skipped; the exit status is 1 if any image failed.
"""
import argparse
import json
import os
import stat
import sys
from types import SimpleNamespace

import numpy as np

from .cli import build_model, check_at_least_one, checkpoint_settings, parse_model_kwargs, \
    resolve_model, run, take_from_checkpoint
from .errors import ConfigError, UsageError
from .fileio import not_a_file, regular_file

IMAGENET_CLASSES = os.path.join(os.path.dirname(__file__), 'data', 'imagenet_classes.txt')
TOPK = 5
MAX_LABELS_BYTES = 16 << 20


def read_labels(path):
    regular_file(path, 'labels file')
    if os.path.getsize(path) > MAX_LABELS_BYTES:
        raise UsageError(f"labels file {path} is larger than {MAX_LABELS_BYTES >> 20} MB: not a "
                         "list of class names")
    try:
        with open(path, encoding='utf-8') as f:
            names = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise UsageError(f"labels file {path} is not UTF-8 text (one class name per line)") \
            from None
    if not names:
        raise UsageError(f"labels file {path} holds no names")
    return names


def class_names(num_classes, labels_path=None, stored=None):
    """Names for each class index: --labels, else the checkpoint's ``stored`` names, else
    ImageNet's for 1000 classes, else None (the tools print indices: any other guess would
    name another dataset's classes)."""
    if labels_path:
        names = read_labels(labels_path)
        if len(names) != num_classes:
            raise UsageError(f"{labels_path} names {len(names)} classes, the model has "
                             f"{num_classes}")
        return names
    if stored:
        return list(stored)
    if num_classes == 1000:
        return read_labels(IMAGENET_CLASSES)
    return None


def load_image(path, in_channels=3):
    """File -> decoded PIL image (RGB, or L for 1-channel models). PIL reads far more formats
    than the dataset decoder; grayscale, palette and RGBA images are converted. Opened without
    blocking and checked to be a regular file on the open descriptor, so a path replaced by a
    FIFO after the first check cannot hang the run."""
    from .data.decode import read_image
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    with os.fdopen(fd, 'rb') as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(not_a_file(path) or 'not a regular file')
        return read_image(f, in_channels)


def preprocess(images, transform):
    """The eval transform (mindcoat.data.EvalTransform) on each PIL image -> NCHW float32."""
    return np.stack([transform(img) for img in images]).astype(np.float32)


def eval_settings_for(model_name, image_size=None, crop_pct=None, interpolation=None,
                      mean=None, std=None, crop_mode=None):
    """The variant's eval settings (DataSettings) with optional overrides, resolved exactly as
    train.py and validate.py resolve theirs (mindcoat.data.resolve_data_settings)."""
    from .data import resolve_data_settings
    wanted = SimpleNamespace(image_resize=image_size, crop_pct=crop_pct, crop_mode=crop_mode,
                             interpolation=interpolation, mean=mean, std=std)
    try:
        return resolve_data_settings(wanted, model_name)
    except ConfigError as exc:  # e.g. an unknown interpolation, a size not a multiple of 32
        raise UsageError(str(exc)) from None


def eval_transforms_for(model_name, image_size=None, crop_pct=None, interpolation=None,
                        mean=None, std=None, crop_mode=None):
    """The eval transform of ``eval_settings_for``."""
    from .data import EvalTransform
    return EvalTransform(eval_settings_for(model_name, image_size, crop_pct, interpolation, mean,
                                           std, crop_mode))


def topk(logits, k):
    """Row-wise softmax probabilities and the indices of the k largest, best first."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    idx = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(probs, idx, axis=1), idx


def predict_files(model, paths, transforms, names, k=5, batch_size=8, in_channels=3,
                  on_error=None):
    """Yields (path, [(class index, name or None, probability), ...]) for each readable image,
    best first. Batches are padded to ``batch_size`` so that graph mode compiles one shape only."""
    import mindspore as ms
    batch_paths, batch = [], []

    def flush():
        x = preprocess(batch, transforms)
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        logits = model(ms.Tensor(x)).asnumpy()[:n].astype(np.float64)
        probs, idx = topk(logits, k)
        for p, row_p, row_i in zip(batch_paths, probs, idx):
            yield p, [(int(i), names[i] if names else None, float(q))
                      for i, q in zip(row_i, row_p)]

    for path in paths:
        try:
            batch.append(load_image(path, in_channels))
            batch_paths.append(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, not fatal
            if on_error:
                on_error(path, exc)
            continue
        if len(batch) == batch_size:
            yield from flush()
            batch_paths, batch = [], []
    if batch:
        yield from flush()


def build_parser():
    p = argparse.ArgumentParser(prog='python -m mindcoat.predict',
                                description='Top-k classes of image files with a CoaT model.')
    p.add_argument('images', nargs='+', help='image files (JPEG, PNG, BMP, ...)')
    p.add_argument('-c', '--config', help='training YAML to take the model and eval settings from')
    p.add_argument('--model', '-m', help="variant, e.g. coat_lite_tiny (default: the "
                                         "checkpoint's, when it tells)")
    p.add_argument('--ckpt_path', help='weights in any format mindcoat reads (docs/weights.md)')
    p.add_argument('--ema', action='store_true', help="use the checkpoint's EMA weights")
    p.add_argument('--labels', help="class names, one per line (default: the checkpoint's, "
                                    "else ImageNet-1k's for 1000 classes, else indices)")
    p.add_argument('--num_classes', type=int,
                   help="default: the checkpoint's, else the number of --labels, else 1000")
    p.add_argument('--in_channels', type=int, help="default: the checkpoint's, else 3")
    p.add_argument('--model_kwargs', help='JSON architecture overrides for create_model')
    p.add_argument('--image_size', type=int, help="default: the variant's input size")
    p.add_argument('--crop_pct', type=float, help="default: the variant's crop_pct")
    p.add_argument('--interpolation', help="default: the variant's (bicubic)")
    p.set_defaults(mean=None, std=None, crop_mode=None)  # from -c CONFIG or the checkpoint
    p.add_argument('--topk', type=int, default=TOPK,
                   help=f'classes per image (default: {TOPK}, or all of fewer)')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--device_target', help='CPU / GPU / Ascend (default: what MindSpore finds)')
    p.add_argument('--json', action='store_true', help='one JSON object per image')
    return p


EVAL_SETTINGS = ('image_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')


def report_unreadable(path, reason):
    print(f"error: cannot read {path}: {reason}", file=sys.stderr)


def print_result(path, top, as_json):
    if as_json:
        print(json.dumps({'image': path, 'top': [
            {'index': i, 'name': n, 'prob': round(q, 6)} for i, n, q in top]}))
        return
    print(path)
    for rank, (i, n, q) in enumerate(top, 1):
        print(f"  {rank}. {q:7.2%}  {n}  [{i}]" if n is not None else f"  {rank}. {q:7.2%}  [{i}]")


def _main(argv):
    args = build_parser().parse_args(argv)
    check_at_least_one(args, ('batch_size', 'topk', 'num_classes', 'in_channels'))
    failed = [path for path in args.images if not_a_file(path)]
    for path in failed:
        report_unreadable(path, not_a_file(path))
    if len(failed) == len(args.images):
        return 1  # nothing to classify: no model is built
    info = checkpoint_settings(args)
    given = SimpleNamespace(**vars(args))
    notes = take_from_checkpoint(resolve_model(args, info), info, EVAL_SETTINGS, given)
    args.in_channels = args.in_channels or 3
    if args.num_classes is None:
        args.num_classes = len(read_labels(args.labels)) if args.labels else 1000
    if args.topk > args.num_classes:  # all of them, best first
        if given.topk != TOPK:
            notes.append(f"--topk {args.topk}: the model has {args.num_classes} classes, all "
                         f"are listed")
        args.topk = args.num_classes
    names = class_names(args.num_classes, args.labels, info.get('class_names'))
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    for note in notes:
        log(note)
    transforms = eval_transforms_for(args.model, args.image_size, args.crop_pct,
                                     args.interpolation, args.mean, args.std, args.crop_mode)
    if len(transforms.mean) != args.in_channels:
        raise UsageError(f"the normalisation has {len(transforms.mean)} channel(s), the model "
                         f"{args.in_channels}: give mean and std per channel (-c CONFIG)")
    import mindspore as ms
    if args.device_target:
        ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    model = build_model(args.model, args.ckpt_path, args.num_classes, args.in_channels, args.ema,
                        parse_model_kwargs(args.model_kwargs), log=log)

    def on_error(path, exc):
        failed.append(path)
        report_unreadable(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    readable = [path for path in args.images if path not in failed]
    for path, top in predict_files(model, readable, transforms, names, args.topk,
                                   args.batch_size, args.in_channels, on_error):
        print_result(path, top, args.json)
    if failed:
        print(f"{len(failed)} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
