"""Export a CoaT model to MindIR for MindSpore Lite / Ascend inference.

    python -m mindcoat.export --model coat_lite_tiny --ckpt_path W.ckpt --image_size 224 \
        --format MINDIR -o coat_lite_tiny.mindir

The graph takes a float32 NCHW batch already normalised with the variant's mean/std (the eval
transform is not part of it) and returns logits. ``--dynamic_batch`` leaves the batch dimension
open; ``--check`` reloads the file through ``nn.GraphCell`` and compares its logits with the Cell.
The number of classes (and, from a mindcoat training checkpoint, the model, its overrides and the
image size) come from the checkpoint; a --num_classes that contradicts it is refused.
"""
import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np

from .cli import build_model, check_at_least_one, check_image_size, checkpoint_settings, \
    parse_model_kwargs, resolve_model, run, take_from_checkpoint
from .errors import UsageError
from .fileio import atomic_output
from .ops.dispatch import native_ops

ONNX_REFUSAL = ("ONNX export is not available: MindSpore 2.10 cannot export the PadV3 and Erf "
                "operators CoaT uses to ONNX; export --format MINDIR instead")


def output_path(path, file_format):
    """The file export writes: ``path`` with the format's suffix (MindSpore only loads '.mindir'
    files), refused in one line if it names a directory or a non-regular file, or if its
    folder is a file."""
    suffix = '.' + file_format.lower()
    for name in (path, path if path.lower().endswith(suffix) else path + suffix):
        if os.path.isdir(name):
            raise UsageError(f"-o {name} is a directory; name the file to write, e.g. "
                             f"{os.path.join(name, 'model' + suffix)}")
    if not path.lower().endswith(suffix):
        path += suffix
    if os.path.exists(path) and not os.path.isfile(path):
        raise UsageError(f"-o {path} exists and is not a regular file; name another file")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"-o {path}: {folder} is a file, not a folder")
    return path


def export_model(model, path, image_size, batch_size=1, dynamic_batch=False, in_channels=3,
                 file_format='MINDIR'):
    """Writes ``model`` to ``path`` (given the format's suffix if it lacks it: MindSpore only loads
    '.mindir' files) through a temporary name, so that an interrupted export never leaves a
    truncated file behind. Returns the path written."""
    import mindspore as ms
    if file_format.upper() == 'ONNX':
        raise UsageError(ONNX_REFUSAL)
    check_image_size(image_size)
    shape = [None if dynamic_batch else batch_size, in_channels, image_size, image_size]
    spec = ms.Tensor(shape=shape, dtype=ms.float32) if dynamic_batch else \
        ms.Tensor(np.zeros(shape, np.float32))
    suffix = '.' + file_format.lower()
    path = output_path(path, file_format)
    model.set_train(False)
    with native_ops(), atomic_output(path, suffix=suffix) as tmp:
        # ms.export appends the format's suffix to the name it is given
        ms.export(model, spec, file_name=tmp[:-len(suffix)], file_format=file_format.upper())
    return path


def check_export(model, path, image_size, batch_size=1, in_channels=3, seed=0):
    """Max |logits(GraphCell(loaded file)) - logits(Cell)| on a random batch."""
    import mindspore as ms
    x = ms.Tensor(np.random.default_rng(seed).standard_normal(
        (batch_size, in_channels, image_size, image_size)).astype(np.float32))
    graph = ms.nn.GraphCell(ms.load(path))
    return float(np.abs(graph(x).asnumpy() - model(x).asnumpy()).max())


def build_parser():
    p = argparse.ArgumentParser(prog='python -m mindcoat.export',
                                description='Export a CoaT model to MindIR.')
    p.add_argument('-c', '--config', help='training YAML to take the model settings from')
    p.add_argument('--model', '-m', help="variant, e.g. coat_lite_tiny (default: the "
                                         "checkpoint's, when it tells)")
    p.add_argument('--ckpt_path', help='weights in any format mindcoat reads (docs/weights.md)')
    p.add_argument('--ema', action='store_true', help="export the checkpoint's EMA weights")
    p.add_argument('--num_classes', type=int, help="default: the checkpoint's, else 1000")
    p.add_argument('--in_channels', type=int, help="default: the checkpoint's, else 3")
    p.add_argument('--model_kwargs', help='JSON architecture overrides for create_model')
    p.add_argument('--image_size', type=int, help="default: the variant's input size")
    p.add_argument('--batch_size', type=int, default=1, help='fixed batch size of the graph')
    p.add_argument('--dynamic_batch', action='store_true', help='leave the batch size open')
    p.add_argument('--format', default='MINDIR', type=str.upper,
                   help='MINDIR (AIR on Ascend only; ONNX is not supported by MindSpore 2.10 '
                        'for CoaT)')
    p.add_argument('-o', '--output', help='file to write (default: <model>.<format>)')
    p.add_argument('--check', action='store_true',
                   help='reload the file and compare its logits with the Cell')
    p.add_argument('--device_target', help='CPU / GPU / Ascend (default: what MindSpore finds)')
    return p


def _main(argv):
    args = build_parser().parse_args(argv)
    if args.format == 'ONNX':
        raise UsageError(ONNX_REFUSAL)  # before anything is built
    if args.format not in ('MINDIR', 'AIR'):
        raise UsageError(f"unknown --format {args.format}; use MINDIR")
    check_at_least_one(args, ('batch_size', 'num_classes', 'in_channels'))
    if args.output:
        output_path(args.output, args.format)
    args.crop_pct = args.interpolation = args.mean = args.std = None  # not used by export
    info = checkpoint_settings(args)
    given = SimpleNamespace(**vars(args))
    for note in take_from_checkpoint(resolve_model(args, info), info, ('image_size',), given):
        print(note)
    args.num_classes = args.num_classes or 1000
    args.in_channels = args.in_channels or 3
    if args.image_size:
        check_image_size(args.image_size)
    out = output_path(args.output or f'{args.model}.{args.format.lower()}', args.format)
    import mindspore as ms
    if args.device_target:
        ms.set_device(args.device_target)
    if args.format == 'AIR' and ms.get_context('device_target') != 'Ascend':
        raise UsageError("AIR export needs an Ascend device; use --format MINDIR")
    ms.set_context(mode=ms.GRAPH_MODE)
    model = build_model(args.model, args.ckpt_path, args.num_classes, args.in_channels,
                        args.ema, parse_model_kwargs(args.model_kwargs))
    size = args.image_size or model.default_cfg['input_size'][-1]
    out = export_model(model, out, size, args.batch_size, args.dynamic_batch, args.in_channels,
                       args.format)
    batch = 'dynamic' if args.dynamic_batch else args.batch_size
    print(f"wrote {out} ({args.format}, input batch {batch} x {args.in_channels} x {size} x "
          f"{size}, float32, normalised)")
    if args.check:
        diff = check_export(model, out, size, 2 if args.dynamic_batch else args.batch_size,
                            args.in_channels)
        print(f"check: reloaded graph vs Cell, max |logit diff| = {diff:.3g}")
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
