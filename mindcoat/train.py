"""Train or fine-tune CoaT from a YAML config (MindCV's keys; every key is also a flag).

    msrun --worker_num 8 --local_worker_num 8 python train.py \\
        -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet
    python -m mindcoat.train -c ... --data_dir DIR --distribute False --ckpt_path weights.pth
    mindcoat-train -c ... --resume ckpt/coat_lite_tiny-latest.ckpt     # continue exactly
"""
import os
import sys

from .cli import run


def _main(argv):
    os.environ.setdefault('GLOG_v', '3')
    from .config import check_training, parse_config
    from .engine.trainer import train
    cfg = parse_config(argv)
    check_training(cfg)
    train(cfg)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
