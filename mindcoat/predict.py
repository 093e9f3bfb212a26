"""Classify image files with a CoaT model and print the top-k classes per image.

    python -m mindcoat.predict --model coat_lite_tiny --ckpt_path W.ckpt cat.jpg dog.png

Images go through the variant's eval transform (the one validate.py uses). ImageNet-1k names ship
with the package; ``--labels FILE`` (one name per line, class-index order) names a fine-tuned
model's classes. An unreadable image is reported on one line and skipped; the exit status is 1
if any image failed.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

import numpy as np

from .cli import UsageError, apply_config, build_model, parse_model_kwargs, run

IMAGENET_CLASSES = os.path.join(os.path.dirname(__file__), 'data', 'imagenet_classes.txt')


def read_labels(path):
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise UsageError(f"labels file {path} holds no names")
    return names


def class_names(num_classes, labels_path=None):
    """Names for each class index: --labels, else ImageNet's for 1000 classes, else 'class i'."""
    if labels_path:
        names = read_labels(labels_path)
        if len(names) != num_classes:
            raise UsageError(f"{labels_path} names {len(names)} classes, the model has "
                             f"{num_classes}")
        return names
    if num_classes == 1000:
        return read_labels(IMAGENET_CLASSES)
    return [f'class {i}' for i in range(num_classes)]


def load_image(path, in_channels=3):
    """File -> decoded PIL image (RGB, or L for 1-channel models). PIL reads far more formats
    than the dataset decoder; grayscale, palette and RGBA images are converted."""
    from .data.decode import read_image
    return read_image(path, in_channels)


def preprocess(images, transform):
    """The eval transform (mindcoat.data.EvalTransform) on each PIL image -> NCHW float32."""
    return np.stack([transform(img) for img in images]).astype(np.float32)


def eval_transforms_for(model_name, image_size=None, crop_pct=None, interpolation=None,
                        mean=None, std=None, crop_mode=None):
    """The variant's eval transform with optional overrides, resolved exactly as train.py and
    validate.py resolve theirs (mindcoat.data.resolve_data_settings)."""
    from .config import ConfigError
    from .data import EvalTransform, resolve_data_settings
    wanted = SimpleNamespace(image_resize=image_size, crop_pct=crop_pct, crop_mode=crop_mode,
                             interpolation=interpolation, mean=mean, std=std)
    try:
        return EvalTransform(resolve_data_settings(wanted, model_name))
    except ConfigError as exc:  # e.g. an unknown interpolation, a size not a multiple of 32
        raise UsageError(str(exc)) from None


def topk(logits, k):
    """Row-wise softmax probabilities and the indices of the k largest, best first."""
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    idx = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(probs, idx, axis=1), idx


def predict_files(model, paths, transforms, names, k=5, batch_size=8, in_channels=3,
                  on_error=None):
    """Yields (path, [(class index, name, probability), ...]) for each readable image, best first.
    Batches are padded to ``batch_size`` so that graph mode compiles one shape only."""
    import mindspore as ms
    k = min(k, len(names))
    batch_paths, batch = [], []

    def flush():
        x = preprocess(batch, transforms)
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
        logits = model(ms.Tensor(x)).asnumpy()[:n].astype(np.float64)
        probs, idx = topk(logits, k)
        for p, row_p, row_i in zip(batch_paths, probs, idx):
            yield p, [(int(i), names[i], float(q)) for i, q in zip(row_i, row_p)]

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
    p.add_argument('--model', '-m', help='variant, e.g. coat_lite_tiny')
    p.add_argument('--ckpt_path', help='weights in any format mindcoat.convert reads')
    p.add_argument('--ema', action='store_true', help="use the checkpoint's EMA weights")
    p.add_argument('--labels', help='class names, one per line (default: ImageNet-1k)')
    p.add_argument('--num_classes', type=int, help='default: number of --labels, else 1000')
    p.add_argument('--in_channels', type=int, help='default: 3')
    p.add_argument('--model_kwargs', help='JSON architecture overrides for create_model')
    p.add_argument('--image_size', type=int, help="default: the variant's input size")
    p.add_argument('--crop_pct', type=float, help="default: the variant's crop_pct")
    p.add_argument('--interpolation', help="default: the variant's (bicubic)")
    p.set_defaults(mean=None, std=None)  # only from -c CONFIG
    p.add_argument('--topk', type=int, default=5)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--device_target', help='CPU / GPU / Ascend (default: what MindSpore finds)')
    p.add_argument('--json', action='store_true', help='one JSON object per image')
    return p


def main(argv=None):
    args = apply_config(build_parser().parse_args(argv))
    args.in_channels = args.in_channels or 3
    import mindspore as ms
    if args.device_target:
        ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    num_classes = args.num_classes or (len(read_labels(args.labels)) if args.labels else 1000)
    names = class_names(num_classes, args.labels)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    transforms = eval_transforms_for(args.model, args.image_size, args.crop_pct,
                                     args.interpolation, args.mean, args.std,
                                     getattr(args, 'crop_mode', None))
    if len(transforms.mean) != args.in_channels:
        raise UsageError(f"the normalisation has {len(transforms.mean)} channel(s), the model "
                         f"{args.in_channels}: give mean and std per channel (-c CONFIG)")
    model = build_model(args.model, args.ckpt_path, num_classes, args.in_channels, args.ema,
                        parse_model_kwargs(args.model_kwargs), log=log)
    failed = []

    def on_error(path, exc):
        failed.append(path)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: cannot read {path}: {reason}", file=sys.stderr)

    for path, top in predict_files(model, args.images, transforms, names, args.topk,
                                   args.batch_size, args.in_channels, on_error):
        if args.json:
            print(json.dumps({'image': path, 'top': [
                {'index': i, 'name': n, 'prob': round(q, 6)} for i, n, q in top]}))
        else:
            print(path)
            for rank, (i, n, q) in enumerate(top, 1):
                print(f"  {rank}. {q:7.2%}  {n}  [{i}]")
    if failed:
        print(f"{len(failed)} of {len(args.images)} images could not be read", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(run(main))
