"""Export a CoaT model to MindIR (MindSpore Lite / Ascend inference) or ONNX (onnxruntime).

    python -m mindcoat.export --model coat_lite_tiny --ckpt_path W.ckpt --image_size 224 \
        --format MINDIR -o coat_lite_tiny.mindir
    python -m mindcoat.export --model coat_lite_tiny --ckpt_path W.ckpt --format ONNX \
        -o coat_lite_tiny.onnx --dynamic_batch --check

The graph takes a float32 NCHW batch already normalised with the variant's mean/std (the eval
transform is not part of it) and returns logits. ``--dynamic_batch`` leaves the batch dimension
open. ``--check`` compares the file's logits with the Cell's: a MindIR reloaded through
``nn.GraphCell`` on a random batch; an ONNX file run by onnxruntime on ``--check_images`` (through
the eval transform) or a random batch, before it is put in place, and refused above
CHECK_TOLERANCE. The number of classes (and, from a mindcoat training checkpoint, the model, its
overrides, the image size and eval settings) come from the checkpoint; a --num_classes that
contradicts it is refused.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

import numpy as np

from . import __version__
from .cli import build_model, check_at_least_one, check_image_size, checkpoint_settings, \
    parse_model_kwargs, resolve_model, run, take_from_checkpoint
from .errors import DataError, MindcoatError, UsageError
from .fileio import atomic_output, regular_file
from .ops.dispatch import export_ops, native_ops
from .predict import EVAL_SETTINGS, eval_settings_for, load_image, preprocess

FORMATS = ('MINDIR', 'AIR', 'ONNX')
INPUT_NAME = 'image'
OUTPUT_NAME = 'logits'
TRACE_BATCH = 2  # the batch an open-batch ONNX graph is traced with (its shapes never hold it)
CHECK_TOLERANCE = 1e-4  # max |logit difference| an ONNX --check accepts
CHECK_INPUTS = 4  # inputs an ONNX --check runs at least: an open batch at 1, then the rest
ONNX_EXTRA = "pip install 'mindcoat[onnx]' (onnx and onnxruntime)"


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


def check_format(file_format):
    """The format in upper case, or a one-line UsageError."""
    if file_format.upper() not in FORMATS:
        raise UsageError(f"unknown --format {file_format}; use MINDIR or ONNX (AIR on Ascend)")
    return file_format.upper()


def require_onnx(runtime=False):
    """ONNX export needs the onnx package, its check onnxruntime too: a missing one is one line."""
    import importlib.util
    for name in ('onnx', 'onnxruntime') if runtime else ('onnx',):
        if importlib.util.find_spec(name) is None:
            raise UsageError(f"--format ONNX{' --check' if runtime else ''} needs the {name} "
                             f"package: {ONNX_EXTRA}")


def export_model(model, path, image_size, batch_size=1, dynamic_batch=False, in_channels=3,
                 file_format='MINDIR', metadata=None, verify=None):
    """Writes ``model`` to ``path`` (given the format's suffix if it lacks it: MindSpore only loads
    '.mindir' files) through a temporary name, so that an interrupted export never leaves a
    truncated file behind. ONNX files also carry ``metadata`` (str -> str) besides their own
    opset, input and output. ``verify(temporary path)``, if given, runs on the finished file
    before it takes ``path``'s place: if it raises, ``path`` keeps what it held. Returns the
    path written."""
    file_format = check_format(file_format)
    check_image_size(image_size)
    if file_format == 'ONNX':
        require_onnx()
    suffix = '.' + file_format.lower()
    path = output_path(path, file_format)
    model.set_train(False)
    with atomic_output(path, suffix=suffix) as tmp:
        if file_format == 'ONNX':
            write_onnx(model, tmp, image_size, batch_size, dynamic_batch, in_channels, metadata)
        else:
            write_mindspore(model, tmp, image_size, batch_size, dynamic_batch, in_channels,
                            file_format)
        if verify is not None:
            verify(tmp)
    return path


def write_mindspore(model, path, image_size, batch_size, dynamic_batch, in_channels, file_format):
    """MindIR or AIR of the model built from native operators (see ops.dispatch.native_ops)."""
    import mindspore as ms
    shape = [None if dynamic_batch else batch_size, in_channels, image_size, image_size]
    spec = ms.Tensor(shape=shape, dtype=ms.float32) if dynamic_batch else \
        ms.Tensor(np.zeros(shape, np.float32))
    suffix = '.' + file_format.lower()
    with native_ops():
        # ms.export appends the format's suffix to the name it is given
        ms.export(model, spec, file_name=path[:-len(suffix)], file_format=file_format)


def write_onnx(model, path, image_size, batch_size, dynamic_batch, in_channels, metadata):
    """The model's export form (ops.dispatch.export_ops) as ONNX. MindSpore's ONNX exporter
    traces static shapes only: an open batch is traced at TRACE_BATCH and declared open in the
    file, which the export form allows by holding no batch size in any shape."""
    import mindspore as ms
    batch = TRACE_BATCH if dynamic_batch else batch_size
    x = ms.Tensor(np.zeros((batch, in_channels, image_size, image_size), np.float32))
    axes = {INPUT_NAME: {0: 'batch'}} if dynamic_batch else None
    with export_ops():
        ms.onnx.export(model, x, file_name=path, input_names=[INPUT_NAME],
                       output_names=[OUTPUT_NAME], dynamic_axes=axes)
    finish_onnx(path, dynamic_batch, metadata or {})


def finish_onnx(path, dynamic_batch, metadata):
    """Declares the output's batch open like the input's (the exporter leaves the traced one),
    writes the metadata and checks the file with onnx's checker."""
    import onnx
    proto = onnx.load(path)
    if dynamic_batch:
        for value in proto.graph.output:
            value.type.tensor_type.shape.dim[0].dim_param = 'batch'
    for key, value in {**metadata, **graph_metadata(proto)}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def _shape(value):
    """A graph input's or output's shape as JSON: numbers, and names for open dimensions."""
    return json.dumps([d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim])


def graph_metadata(proto):
    """The opset and the name and shape of the graph's input and output, read from the graph."""
    import onnx
    opset = max(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))
    props = {'opset': str(opset)}
    for kind, value in (('input', proto.graph.input[0]), ('output', proto.graph.output[0])):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        props.update({kind: value.name, f'{kind}_shape': _shape(value),
                      f'{kind}_dtype': np.dtype(dtype).name})
    return props


def onnx_metadata(model_name, settings, model_kwargs=None):
    """What a user of the file needs beyond the graph: the model and how to prepare its input."""
    props = {'model': model_name, 'producer': f'mindcoat {__version__}',
             'layout': 'NCHW, RGB', 'crop_pct': str(settings.crop_pct),
             'crop_mode': settings.crop_mode, 'interpolation': settings.interpolation,
             'mean': json.dumps(list(settings.mean)), 'std': json.dumps(list(settings.std)),
             'normalisation': '(pixel / 255 - mean) / std per channel, as the eval transform'}
    if model_kwargs:
        props['model_kwargs'] = json.dumps(model_kwargs)
    return props


def check_export(model, path, image_size, batch_size=1, in_channels=3, seed=0):
    """Max |logits(GraphCell(loaded file)) - logits(Cell)| on a random batch."""
    import mindspore as ms
    x = ms.Tensor(random_batch(batch_size, in_channels, image_size, seed))
    graph = ms.nn.GraphCell(ms.load(path))
    return float(np.abs(graph(x).asnumpy() - model(x).asnumpy()).max())


def random_batch(batch_size, in_channels, image_size, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (batch_size, in_channels, image_size, image_size)).astype(np.float32)


def check_plan(count, batch_size, dynamic_batch):
    """The batch sizes onnxruntime runs ``count`` check inputs in (cycled to fill them): with an
    open batch, 1 and the rest (3 or more: neither is TRACE_BATCH), else batch_size."""
    if dynamic_batch:
        return (1, max(count, CHECK_INPUTS) - 1)
    return (batch_size,) * -(-count // batch_size)


def onnx_logits(path, x, batches):
    """onnxruntime's logits of ``x``, run in consecutive slices of the sizes in ``batches``."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3  # a failure is raised; its log lines would repeat it
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    outs, start = [], 0
    for size in batches:
        outs.append(session.run([OUTPUT_NAME], {INPUT_NAME: x[start:start + size]})[0])
        start += size
    return np.concatenate(outs)


def check_onnx(model, path, inputs, batch_size=1, dynamic_batch=False):
    """Max |logits(onnxruntime) - logits(Cell)| over ``inputs`` (N, C, H, W), cycled to fill
    ``check_plan``'s batches; the Cell runs them all in one batch. Returns (diff, batches)."""
    import mindspore as ms
    batches = check_plan(len(inputs), batch_size, dynamic_batch)
    x = np.stack([inputs[i % len(inputs)] for i in range(sum(batches))])
    expected = model(ms.Tensor(x)).asnumpy()
    return float(np.abs(onnx_logits(path, x, batches) - expected).max()), batches


def onnx_verifier(model, inputs, batch_size, dynamic_batch, what):
    """``verify`` for export_model: ``check_onnx`` on ``inputs`` (described by ``what``),
    printed, and the file refused above CHECK_TOLERANCE."""
    def verify(path):
        diff, batches = check_onnx(model, path, inputs, batch_size, dynamic_batch)
        sizes = ' and '.join(str(b) for b in sorted(set(batches)))
        print(f"check: onnxruntime vs Cell on {what} (batch {sizes}), max |logit diff| = "
              f"{diff:.3g}")
        if not diff <= CHECK_TOLERANCE:
            raise MindcoatError(f"check failed: onnxruntime's logits differ from the Cell's by "
                                f"{diff:.3g}, more than {CHECK_TOLERANCE:.0e}; nothing was written")
    return verify


def read_check_images(paths, settings, in_channels):
    """The --check_images through the eval transform -> (N, C, H, W) float32."""
    from .data import EvalTransform
    images = []
    for path in paths:
        try:
            images.append(load_image(path, in_channels))
        except Exception as exc:  # noqa: BLE001 - any unreadable image is one line
            raise DataError(f"--check_images {path}: cannot read it ({exc})") from None
    return preprocess(images, EvalTransform(settings))


def build_parser():
    p = argparse.ArgumentParser(prog='python -m mindcoat.export',
                                description='Export a CoaT model to MindIR or ONNX.')
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
                   help=f"MINDIR or ONNX (AIR on Ascend only); ONNX needs {ONNX_EXTRA}")
    p.add_argument('-o', '--output', help='file to write (default: <model>.<format>)')
    p.add_argument('--check', action='store_true',
                   help="compare the file's logits with the Cell's (ONNX: in onnxruntime, "
                        f"refused above {CHECK_TOLERANCE:.0e})")
    p.add_argument('--check_images', nargs='+', metavar='IMAGE',
                   help='ONNX --check on these images through the eval transform (default: a '
                        'random batch); implies --check')
    p.add_argument('--device_target', help='CPU / GPU / Ascend (default: what MindSpore finds)')
    p.set_defaults(crop_pct=None, crop_mode=None, interpolation=None, mean=None, std=None)
    return p


def check_arguments(args):
    """Everything the command line alone can refuse, before a checkpoint is read."""
    args.format = check_format(args.format)
    check_at_least_one(args, ('batch_size', 'num_classes', 'in_channels'))
    if args.check_images:
        if args.format != 'ONNX':
            raise UsageError("--check_images is for --format ONNX (a MindIR is checked on a "
                             "random batch)")
        args.check = True
        for path in args.check_images:
            regular_file(path, '--check_images')
    if args.format == 'ONNX':
        require_onnx(runtime=args.check)
    if args.output:
        output_path(args.output, args.format)


def resolve_arguments(args):
    """The model, its classes, channels, image size and eval settings: the command line's, else
    -c CONFIG's or the checkpoint's (said in a line each), else the defaults."""
    info = checkpoint_settings(args)
    given = SimpleNamespace(**vars(args))
    for note in take_from_checkpoint(resolve_model(args, info), info, EVAL_SETTINGS, given):
        print(note)
    args.num_classes = args.num_classes or 1000
    args.in_channels = args.in_channels or 3
    if args.image_size:
        check_image_size(args.image_size)


def load_model(args):
    """The model with its weights, in graph mode on the chosen device."""
    import mindspore as ms
    if args.device_target:
        ms.set_device(args.device_target)
    if args.format == 'AIR' and ms.get_context('device_target') != 'Ascend':
        raise UsageError("AIR export needs an Ascend device; use --format MINDIR")
    ms.set_context(mode=ms.GRAPH_MODE)
    return build_model(args.model, args.ckpt_path, args.num_classes, args.in_channels,
                       args.ema, parse_model_kwargs(args.model_kwargs))


def export_mindspore(model, out, args):
    """MINDIR / AIR, then --check on the reloaded file."""
    size = args.image_size or model.default_cfg['input_size'][-1]
    out = export_model(model, out, size, args.batch_size, args.dynamic_batch, args.in_channels,
                       args.format)
    print_written(out, args, size)
    if args.check:
        diff = check_export(model, out, size, 2 if args.dynamic_batch else args.batch_size,
                            args.in_channels)
        print(f"check: reloaded graph vs Cell, max |logit diff| = {diff:.3g}")


def export_onnx(model, out, args, settings, images=None):
    """ONNX, with --check run on the file before it is put in place: on ``images`` (N, C, H, W)
    if given, else on a random batch."""
    size = settings.image_size
    verify = None
    if args.check:
        what = 'random inputs' if images is None else \
            f"{len(images)} image{'s' if len(images) > 1 else ''}"
        if images is None:
            images = random_batch(CHECK_INPUTS, args.in_channels, size)
        verify = onnx_verifier(model, images, args.batch_size, args.dynamic_batch, what)
    metadata = onnx_metadata(args.model, settings, parse_model_kwargs(args.model_kwargs))
    out = export_model(model, out, size, args.batch_size, args.dynamic_batch, args.in_channels,
                       'ONNX', metadata, verify)
    print_written(out, args, size)


def print_written(out, args, size):
    batch = 'dynamic' if args.dynamic_batch else args.batch_size
    print(f"wrote {out} ({args.format}, input batch {batch} x {args.in_channels} x {size} x "
          f"{size}, float32, normalised)")


def _main(argv):
    args = build_parser().parse_args(argv)
    check_arguments(args)
    resolve_arguments(args)
    out = output_path(args.output or f'{args.model}.{args.format.lower()}', args.format)
    if args.format != 'ONNX':
        export_mindspore(load_model(args), out, args)
        return 0
    settings = eval_settings_for(args.model, args.image_size, args.crop_pct, args.interpolation,
                                 args.mean, args.std, args.crop_mode)
    images = None
    if args.check_images:  # read before the model is built: a bad image fails fast
        images = read_check_images(args.check_images, settings, args.in_channels)
    export_onnx(load_model(args), out, args, settings, images)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
