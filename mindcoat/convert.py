"""Convert CoaT weights from any source to a mindcoat MindSpore checkpoint.

    python -m mindcoat.convert SRC -m NAME -o OUT.ckpt [--ema] [--num_classes N] [--non_strict]
        [--model_kwargs JSON] [--max_gb G]

Sources: the official .pth (bare state dicts and the trainer's checkpoints), timm .pth /
.safetensors, MindCV .ckpt, mindcoat .ckpt. No code from the file is executed, and nothing is
written unless the whole file fits the model.
"""
import argparse
import sys

from .cli import parse_model_kwargs, run
from .errors import UsageError
from .models import build_coat, list_models
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m mindcoat.convert',
        description='Convert CoaT weights (official .pth, timm .pth/.safetensors, MindCV .ckpt, '
                    'mindcoat .ckpt) to a mindcoat MindSpore checkpoint. No code from the file '
                    'is executed, and nothing is written unless the whole file fits the model.')
    parser.add_argument('src', help='weight file to read')
    parser.add_argument('-m', '--model', required=True, help='variant, e.g. coat_lite_tiny')
    parser.add_argument('-o', '--output', required=True, help='MindSpore .ckpt to write')
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


def _main(argv):
    args = build_parser().parse_args(argv)
    if args.model not in list_models():
        raise UsageError(f"unknown model '{args.model}'; choose one of: "
                         f"{', '.join(list_models())}")
    convert_checkpoint(args.src, args.model, args.output, use_ema=args.ema,
                       num_classes=args.num_classes, strict=not args.non_strict,
                       model_kwargs=parse_model_kwargs(args.model_kwargs), max_gb=args.max_gb)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
