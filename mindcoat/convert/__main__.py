"""python -m mindcoat.convert SRC -m NAME -o OUT.ckpt [--ema] [--num_classes N] [--non_strict]
[--model_kwargs JSON] [--max_gb G]"""
import argparse
import sys

from . import DEFAULT_MAX_GB, MAX_GB_ENV, CheckpointError, convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m mindcoat.convert',
        description='Convert CoaT weights (official .pth, timm .pth/.safetensors, MindCV .ckpt, '
                    'mindcoat .ckpt) to a mindcoat MindSpore checkpoint. No code from the file '
                    'is executed, and nothing is written unless the whole file fits the model.')
    parser.add_argument('src', help='weight file to read')
    parser.add_argument('-m', '--model', required=True, help='variant, e.g. coat_lite_tiny')
    parser.add_argument('-o', '--output', required=True, help='MindSpore .ckpt to write')
    parser.add_argument('--ema', action='store_true', help='take the EMA weights (model_ema)')
    parser.add_argument('--num_classes', type=int, default=1000,
                        help='classes of the target model; a different head is re-initialised')
    parser.add_argument('--non_strict', action='store_true',
                        help='load what fits: keys the model lacks are skipped and parameters '
                             'the file lacks keep their initialisation (both listed)')
    parser.add_argument('--model_kwargs', default=None,
                        help='JSON overrides of the variant, e.g. \'{"embed_dims": [64, 128, '
                             '256, 320]}\'')
    parser.add_argument('--max_gb', type=float, default=None,
                        help=f'largest size the file may inflate to, in GB (default: '
                             f'${MAX_GB_ENV} or {DEFAULT_MAX_GB:g})')
    args = parser.parse_args(argv)
    from ..cli import UsageError, parse_model_kwargs
    from ..models import list_models
    if args.model not in list_models():
        print(f"error: unknown model '{args.model}'; choose one of: {', '.join(list_models())}",
              file=sys.stderr)
        return 2
    try:
        model_kwargs = parse_model_kwargs(args.model_kwargs)
        convert_checkpoint(args.src, args.model, args.output, use_ema=args.ema,
                           num_classes=args.num_classes, strict=not args.non_strict,
                           model_kwargs=model_kwargs, max_gb=args.max_gb)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
