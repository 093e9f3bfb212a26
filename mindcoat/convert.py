"""Convert CoaT weights from any source to a mindcoat MindSpore checkpoint.

    python -m mindcoat.convert SRC -m NAME -o OUT.ckpt [--ema] [--num_classes N] [--non_strict]
        [--model_kwargs JSON] [--max_gb G]
    python -m mindcoat.convert DETECTOR.pth -m mask_rcnn_coat_lite_mini_3x -o OUT.ckpt
    python -m mindcoat.convert DETECTOR.pth --config my_detector.yaml -o OUT.ckpt

Sources: the official .pth (bare state dicts and the trainer's checkpoints), timm .pth /
.safetensors, MindCV .ckpt, mindcoat .ckpt. A detector name as -m (or a detector YAML as
--config, e.g. a detector of other widths) converts an MMDetection checkpoint of the CoaT
Mask R-CNN instead, every key and shape checked. No code from the file is executed, and nothing
is written unless the whole file fits the model.
"""
import argparse
import sys

from .cli import parse_model_kwargs, run
from .errors import UsageError
from .models import build_coat, list_models
from .models.detection import list_detectors
from .weights import DEFAULT_MAX_GB, MAX_GB_ENV, checkpoint_info, load_weights, save_ckpt


def convert_checkpoint(src, model_name, out, use_ema=False, num_classes=None, strict=True,
                       model_kwargs=None, max_gb=None, log=print):
    """Reads ``src`` (any supported format) and writes a MindSpore checkpoint (with a CRC) for
    ``model_name`` built with ``model_kwargs``. ``num_classes`` None: the file's head. Returns
    the LoadReport."""
    if num_classes is None:
        num_classes = checkpoint_info(src, max_gb).get('num_classes', 1000)
    try:
        model = build_coat(model_name, num_classes=num_classes, **(model_kwargs or {}))
    except TypeError as exc:  # an override the model does not take
        raise UsageError(f"bad model_kwargs for {model_name}: {exc}") from None
    report = load_weights(model, src, use_ema=use_ema, strict=strict, log=log, max_gb=max_gb)
    save_ckpt(out, model)
    log(f"wrote {out}")
    return report


def convert_detector(src, out, name=None, config=None, num_classes=None, max_gb=None,
                     log=print):
    """Reads the MMDetection checkpoint ``src`` into detector ``name`` built with ``config`` (a
    DetectorConfig or a detector YAML path; default: the official settings of ``name``) and
    writes mindcoat's detector .ckpt. ``num_classes`` None: the file's. Returns the detector."""
    from .factory import create_detector
    from .weights.detection import load_detector_weights, read_detector_checkpoint, \
        save_detector_ckpt
    ckpt = read_detector_checkpoint(src, max_gb)
    if num_classes is None:
        num_classes = ckpt.info['num_classes']
    net = create_detector(name, num_classes=num_classes, config=config, log=log)
    load_detector_weights(net, ckpt, log=log)
    save_detector_ckpt(out, net, ckpt.info['class_names'])
    log(f"wrote {out}")
    return net


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m mindcoat.convert',
        description='Convert CoaT weights (official .pth, timm .pth/.safetensors, MindCV .ckpt, '
                    'mindcoat .ckpt) to a mindcoat MindSpore checkpoint. No code from the file '
                    'is executed, and nothing is written unless the whole file fits the model. '
                    'A detector name (or --config) converts an MMDetection detector checkpoint.')
    parser.add_argument('src', help='weight file to read')
    parser.add_argument('-m', '--model',
                        help='variant, e.g. coat_lite_tiny, or detector, e.g. '
                             'mask_rcnn_coat_lite_mini_3x')
    parser.add_argument('-o', '--output', required=True, help='MindSpore .ckpt to write')
    parser.add_argument('-c', '--config', default=None,
                        help='detector YAML (configs/det/*.yaml, or one of other widths): the '
                             'detector to convert for')
    parser.add_argument('--ema', action='store_true', help='take the EMA weights (model_ema)')
    parser.add_argument('--num_classes', type=int, default=None,
                        help="classes of the target model (default: the file's head); a "
                             "different number re-initialises the head")
    parser.add_argument('--non_strict', action='store_true',
                        help='load what fits: keys the model lacks are skipped and parameters '
                             'the file lacks keep their initialisation (both listed)')
    parser.add_argument('--model_kwargs', default=None,
                        help='JSON overrides of the variant, e.g. \'{"embed_dims": [64, 128, '
                             '256, 320]}\'')
    parser.add_argument('--max_gb', type=float, default=None,
                        help=f'largest size the file may inflate to, in GB (default: '
                             f'${MAX_GB_ENV} or {DEFAULT_MAX_GB:g})')
    return parser


def _is_detector(args):
    """Whether the arguments ask for a detector (a detector name or --config); names nothing
    known is a one-line error."""
    if args.config or args.model in list_detectors():
        return True
    if args.model is None:
        raise UsageError("say which model: -m NAME (a classifier such as coat_lite_tiny, or a "
                         "detector such as mask_rcnn_coat_lite_mini_3x), or --config DETECTOR.yaml")
    if args.model not in list_models():
        raise UsageError(f"unknown model '{args.model}'; choose one of: "
                         f"{', '.join(list_models())}; or a detector: "
                         f"{', '.join(list_detectors())}")
    return False


def _check_detector_args(args):
    # a detector checkpoint converts whole: nothing to pick, skip or override
    for flag, given in (('--ema', args.ema), ('--non_strict', args.non_strict),
                        ('--model_kwargs', args.model_kwargs)):
        if given:
            raise UsageError(f"{flag} is for classifiers; a detector converts whole (other "
                             "widths: --config DETECTOR.yaml)")
    if args.model is not None and args.model in list_models():
        raise UsageError(f"--config is a detector YAML, but -m {args.model} is a classifier: "
                         "drop one of them")


def _main(argv):
    args = build_parser().parse_args(argv)
    if _is_detector(args):
        from .config import find_config
        _check_detector_args(args)
        if args.num_classes is not None and args.num_classes < 1:
            raise UsageError(f"--num_classes must be at least 1, got {args.num_classes}")
        convert_detector(args.src, args.output, args.model,
                         find_config(args.config) if args.config else None, args.num_classes,
                         args.max_gb)
        return 0
    convert_checkpoint(args.src, args.model, args.output, use_ema=args.ema,
                       num_classes=args.num_classes, strict=not args.non_strict,
                       model_kwargs=parse_model_kwargs(args.model_kwargs), max_gb=args.max_gb)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
