"""python -m mindcoat.convert SRC -m NAME -o OUT.ckpt [--ema] [--num_classes N]"""
import argparse
import sys

from . import CheckpointError, convert_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m mindcoat.convert',
        description='Convert CoaT weights (official .pth, timm .pth/.safetensors, MindCV .ckpt, '
                    'mindcoat .ckpt) to a mindcoat MindSpore checkpoint. No code from the file '
                    'is executed.')
    parser.add_argument('src', help='weight file to read')
    parser.add_argument('-m', '--model', required=True, help='variant, e.g. coat_lite_tiny')
    parser.add_argument('-o', '--output', required=True, help='MindSpore .ckpt to write')
    parser.add_argument('--ema', action='store_true', help='take the EMA weights (model_ema)')
    parser.add_argument('--num_classes', type=int, default=1000,
                        help='classes of the target model; a different head is re-initialised')
    args = parser.parse_args(argv)
    from ..models import list_models
    if args.model not in list_models():
        print(f"error: unknown model '{args.model}'; choose one of: {', '.join(list_models())}",
              file=sys.stderr)
        return 2
    try:
        convert_checkpoint(args.src, args.model, args.output, use_ema=args.ema,
                           num_classes=args.num_classes)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
