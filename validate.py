"""Evaluate a CoaT checkpoint on an image folder's val split: loss, Acc@1, Acc@5.

    python validate.py -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet \
        --ckpt_path /path/to/weights

Takes the trainer's YAML files and flags (MindCV names: batch_size, num_parallel_workers,
image_resize, crop_pct, interpolation, ...), the variant's eval transform, and weights in any
format mindcoat.convert reads. Validate-only flags: --ema (the checkpoint's EMA weights), --json
(only the JSON line on stdout), --results_file (append the JSON line to a file). Under msrun with
--distribute True each rank evaluates its own shard (every image exactly once) and the counts are
summed, so the numbers equal a single-device run. The last line printed is always JSON.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from mindcoat.cli import UsageError, check_image_size, fail
from mindcoat.config import ConfigError, create_parser, parse_config, str2bool

# validate-only flags, kept out of the trainer's key set (which rejects unknown keys)
EXTRA = [
    # the YAML's 'ema' key (train with an EMA) is not read here: only the command line chooses
    ('--ema', dict(nargs='?', const=True, default=False, type=str2bool,
                   help="evaluate the checkpoint's EMA weights (same as --ckpt_use_ema True)")),
    ('--json', dict(action='store_true', help='print only the JSON result line on stdout')),
    ('--results_file', dict(default=None, help='append the JSON result line to this file')),
]


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kw in EXTRA:
        pre.add_argument(flag, **kw)
    extra, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = create_parser()
    parser.description = 'Evaluate a CoaT checkpoint (loss, Acc@1, Acc@5)'
    group = parser.add_argument_group('validate')
    for flag, kw in EXTRA:  # listed in --help; parsed above
        clash = [a for a in parser._actions if flag in a.option_strings]
        if clash:  # the trainer's --ema (keep an EMA while training) means something else here
            clash[0].help = kw['help']
        else:
            group.add_argument(flag, **dict(kw, default=argparse.SUPPRESS))
    cfg = parse_config(rest, parser)
    cfg.use_ema = bool(extra.ema or cfg.ckpt_use_ema)
    cfg.json = extra.json
    cfg.results_file = extra.results_file
    return cfg


class Counts:
    """Running sums whose totals over shards equal the totals of one pass over all images."""
    FIELDS = ('loss_sum', 'top1', 'top5', 'num', 'skipped')

    def __init__(self):
        self.values = np.zeros(len(self.FIELDS), np.float64)

    def add(self, logits, labels):
        logits = logits.astype(np.float64)
        z = logits - logits.max(axis=1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        rows = np.arange(len(labels))
        k = min(5, logits.shape[1])
        # ties broken by index, as a stable sort would
        top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
        self.values[:4] += (-log_probs[rows, labels].sum(), (top[:, 0] == labels).sum(),
                            (top == labels[:, None]).any(axis=1).sum(), len(labels))

    def summary(self):
        loss_sum, top1, top5, num, skipped = self.values
        if not num:
            return dict(loss=float('nan'), top1=float('nan'), top5=float('nan'), num_images=0,
                        skipped_images=int(skipped))
        return dict(loss=loss_sum / num, top1=100.0 * top1 / num, top5=100.0 * top5 / num,
                    num_images=int(num), skipped_images=int(skipped))


def evaluate(model, batches, batch_size, counts=None):
    """Feeds (images, labels) numpy batches through ``model``; the last short batch is padded to
    ``batch_size`` so graph mode compiles a single input shape. Labels may be one-hot."""
    import mindspore as ms
    counts = counts or Counts()
    model.set_train(False)
    for images, labels in batches:
        n = len(images)
        if n < batch_size:
            images = np.concatenate(
                [images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        logits = model(ms.Tensor(images)).asnumpy()[:n]
        labels = np.asarray(labels)
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(np.int64)
        counts.add(logits, labels)
    return counts


def all_reduce_sum(values, world):
    """Sums a float64 vector over the msrun ranks, exactly: each rank's float64 bits travel as
    int32 through an AllGather (MindSpore 2.10's CPU collectives take no float64, float32 would
    round the loss sum, and int64 AllGather came back garbled) and are added here in rank order.
    A graph-mode Cell: the CPU has no PyNative collective kernels."""
    import mindspore as ms
    from mindspore import nn, ops

    class Gather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gather = ops.AllGather()

        def construct(self, x):
            return self.gather(x)

    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int32)
    with_mode = ms.get_context('mode')
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        gathered = Gather()(ms.Tensor(bits)).asnumpy()
    finally:
        ms.set_context(mode=with_mode)
    return np.ascontiguousarray(gathered).view(np.float64).reshape(world, -1).sum(axis=0)


def eval_data(cfg, transforms, rank=0, world=1):
    """The trainer's eval pipeline over data_dir/val_split. Labels follow the train split's
    classes when it is present (a val folder missing a class must not shift the indices)."""
    from mindcoat.data import DataError, check_split, create_dataset, find_classes
    val_dir = os.path.join(cfg.data_dir, cfg.val_split)
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    if os.path.isdir(train_dir):
        classes = find_classes(train_dir)
        check_split(val_dir, classes)
    else:
        classes = find_classes(val_dir)
    if len(classes) > cfg.num_classes:
        raise DataError(f"{val_dir} has {len(classes)} classes, the model only {cfg.num_classes} "
                        f"(set --num_classes)")
    return create_dataset(val_dir, classes, transforms, cfg.batch_size, is_training=False,
                          num_classes=cfg.num_classes, channels=cfg.in_channels, rank=rank,
                          world_size=world,
                          # the recipes ask for 8; mindspore.dataset refuses more than the CPUs
                          num_parallel_workers=max(1, min(cfg.num_parallel_workers,
                                                          os.cpu_count() or 1)))


def main(argv=None):
    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        fail(str(exc))
    import mindspore as ms
    from mindcoat.cli import build_model, parse_model_kwargs
    from mindcoat.data.transforms import create_transforms
    from mindcoat.models import DATA_CONFIGS

    if cfg.device_target and cfg.device_target != 'auto':
        ms.set_device(cfg.device_target)
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == 0 else ms.PYNATIVE_MODE)
    rank, world = 0, 1
    # The recipes say distribute: True (they train under msrun); validating with such a YAML on
    # one device must still work, so a distributed run also needs a launcher's environment.
    launched = 'MS_ROLE' in os.environ or 'RANK_TABLE_FILE' in os.environ
    if cfg.distribute and not launched:
        print("note: distribute is on but validate.py was not started by msrun: evaluating on "
              "this device alone", file=sys.stderr)
    if cfg.distribute and launched:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        rank, world = get_rank(), get_group_size()
    say = (lambda *a: print(*a, file=sys.stderr)) if cfg.json else print
    log = say if rank == 0 else (lambda *a: None)
    try:
        if not cfg.data_dir:
            raise UsageError("--data_dir is required (a folder holding "
                             f"{cfg.val_split}/<class>/<image>)")
        if cfg.model not in DATA_CONFIGS:
            raise UsageError(f"unknown model '{cfg.model}'; choose one of: "
                             f"{', '.join(sorted(DATA_CONFIGS))}")
        # the variant's eval transform unless overridden; data errors surface before any build
        dc = DATA_CONFIGS[cfg.model]
        size = cfg.image_resize or dc['input_size'][-1]
        check_image_size(size)
        crop_pct = dc['crop_pct'] if cfg.crop_pct is None else cfg.crop_pct
        interpolation = cfg.interpolation or dc['interpolation']
        transforms = create_transforms(False, image_size=size, crop_pct=crop_pct,
                                       crop_mode=dc['crop_mode'], interpolation=interpolation,
                                       mean=cfg.mean or dc['mean'], std=cfg.std or dc['std'])
        data = eval_data(cfg, transforms, rank, world)
        ckpt = cfg.ckpt_path or (cfg.pretrained if isinstance(cfg.pretrained, str) else None)
        model = build_model(cfg.model, ckpt, cfg.num_classes, cfg.in_channels, cfg.use_ema,
                            parse_model_kwargs(cfg.model_kwargs), log=log)
    except (UsageError, ValueError, FileNotFoundError) as exc:  # config, data, weights
        fail(str(exc))
    start = time.time()
    counts = evaluate(model, data.loader.create_tuple_iterator(num_epochs=1, output_numpy=True),
                      cfg.batch_size)
    bad = data.bad_images.take()
    for path in bad:
        say(f"skipped unreadable image: {path}")
    counts.values[4] = len(bad)
    if world > 1:
        counts.values = all_reduce_sum(counts.values, world)
    result = dict(model=cfg.model, ckpt_path=ckpt, ema=cfg.use_ema, data_dir=cfg.data_dir,
                  split=cfg.val_split, image_size=size, crop_pct=crop_pct,
                  interpolation=interpolation, **counts.summary(), ranks=world,
                  seconds=round(time.time() - start, 2))
    if rank != 0:
        return 0
    log(f"{cfg.model} on {result['num_images']} images ({cfg.val_split}, {size}px, crop_pct "
        f"{crop_pct}, {interpolation}): loss {result['loss']:.4f}  Acc@1 {result['top1']:.3f}  "
        f"Acc@5 {result['top5']:.3f}")
    line = json.dumps(result)
    if cfg.results_file:
        with open(cfg.results_file, 'a') as f:
            f.write(line + '\n')
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
