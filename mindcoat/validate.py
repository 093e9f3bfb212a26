"""Evaluate a CoaT checkpoint on an image folder's val split: loss, Acc@1, Acc@5.

    python validate.py -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet \
        --ckpt_path /path/to/weights          # or python -m mindcoat.validate, mindcoat-validate

Takes the trainer's YAML files and flags (MindCV names: batch_size, num_parallel_workers,
image_resize, crop_pct, interpolation, ...), the variant's eval transform, and weights in any
format mindcoat.weights reads. Validate-only flags: --json (only the JSON line on stdout),
--results_file (append the JSON line to a file), --random_weights (score an untrained model).

What the checkpoint says wins over the config file: a mindcoat training checkpoint gives the
model, its class count and names, and the image size and crop it was trained with; a flag typed
on the command line wins over both (a class count that contradicts the file is refused).

Which weights: ``--ema True|False`` or ``--ckpt_use_ema`` typed on the command line say it (EMA
weights from a file without them is an error). Otherwise a mindcoat training checkpoint's own
record decides (the weights that scored better in the trainer's last validation, said in one
line; the raw weights if it never validated), and for other files the config's ``ema: True``
takes their EMA weights when they have them, as MindCV's validate.py does. ``val_amp_level``
casts the evaluated network on Ascend/GPU (MindCV's meaning); the CPU evaluates in float32 and
says so. Under msrun with --distribute True each rank evaluates its own shard (every image
exactly once) and the counts are summed, so the numbers equal a single-device run. The last
line printed is always JSON.
"""
import argparse
import json
import os
import sys
import time

from .cli import run
from .config import create_parser, parse_config
from .errors import CheckpointError, UsageError

# validate-only flags, kept out of the trainer's key set (which rejects unknown keys)
EXTRA = [
    ('--json', dict(action='store_true', help='print only the JSON result line on stdout')),
    ('--results_file', dict(default=None, help='append the JSON result line to this file')),
    ('--random_weights', dict(action='store_true',
                              help='score a model without weights (otherwise refused)')),
]
# eval settings a training checkpoint stores: its checkpoint_info name -> the config key
CHECKPOINT_EVAL = {'image_size': 'image_resize', 'crop_pct': 'crop_pct',
                   'crop_mode': 'crop_mode', 'interpolation': 'interpolation', 'mean': 'mean',
                   'std': 'std'}


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag, kw in EXTRA:
        pre.add_argument(flag, **kw)
    extra, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    parser = create_parser('Evaluate a CoaT checkpoint (loss, Acc@1, Acc@5)')
    group = parser.add_argument_group('validate')
    for flag, kw in EXTRA:  # listed in --help; parsed above
        group.add_argument(flag, **dict(kw, default=argparse.SUPPRESS))
    cfg = parse_config(rest, parser)
    for flag, _ in EXTRA:
        setattr(cfg, flag[2:], getattr(extra, flag[2:]))
    return cfg


def choose_ema(cfg, ckpt, info, log):
    """Whether to evaluate EMA weights (see the module's docstring). ``info``: checkpoint_info
    of ``ckpt`` ({} without a file)."""
    typed = vars(cfg.command_line)
    if 'ema' in typed or 'ckpt_use_ema' in typed:
        wanted = bool(typed.get('ema') or typed.get('ckpt_use_ema'))
        if wanted and not info.get('has_ema'):
            raise CheckpointError(f"{ckpt or 'the official weights'}: no EMA weights in this "
                                  "file; drop --ema / --ckpt_use_ema")
        return wanted
    if info.get('format') == 'mindcoat-train-v1':
        if info.get('eval_weights') == 'ema' and info.get('has_ema'):
            log(f"note: evaluating the EMA weights of {ckpt}, which scored better in the "
                f"trainer's last validation (--ema False for the others)")
            return True
        if info.get('has_ema'):
            log(f"note: evaluating the trained weights of {ckpt}"
                f"{', which scored better than its EMA' if info.get('eval_weights') else ''} "
                f"(--ema True for the EMA weights)")
        return False
    if not cfg.ema:
        return False
    if info.get('has_ema'):
        log(f"note: evaluating the EMA weights of {ckpt} (the config says ema: True)")
        return True
    log(f"note: {ckpt or 'the official weights'} has no EMA weights: evaluating its weights "
        f"(the config says ema: True)")
    return False


def checkpoint_settings_win(cfg, info, log):
    """The model and eval settings a training checkpoint stores replace the config file's (the
    command line still wins): a run trained at 64 px is validated at 64 px."""
    typed = vars(cfg.command_line)
    if info.get('model') and 'model' not in typed and info['model'] != cfg.model:
        log(f"note: model {info['model']} from the checkpoint (the config says {cfg.model})")
        cfg.model, cfg.model_kwargs = info['model'], None
    if cfg.model == info.get('model') and 'model_kwargs' not in typed and \
            info.get('model_kwargs') is not None:
        cfg.model_kwargs = info['model_kwargs']
    for theirs, key in CHECKPOINT_EVAL.items():
        value = info.get(theirs)
        if value is None or key in typed or getattr(cfg, key) == value:
            continue
        if getattr(cfg, key) is not None:
            log(f"note: {key} {value} from the checkpoint (the config says {getattr(cfg, key)})")
        setattr(cfg, key, value)


def eval_data(cfg, settings, rank=0, world=1, class_names=None):
    """The trainer's eval pipeline over data_dir/val_split. Labels follow the checkpoint's class
    names when it stores them, else the train split's classes when it is present (a val folder
    missing a class must not shift the indices)."""
    from .data import check_split, create_loader, find_classes
    from .errors import DataError
    val_dir = os.path.join(cfg.data_dir, cfg.val_split)
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    if class_names:
        classes = list(class_names)
        check_split(val_dir, classes)
    elif os.path.isdir(train_dir):
        classes = find_classes(train_dir)
        check_split(val_dir, classes)
    else:
        classes = find_classes(val_dir)
    if cfg.num_classes is None:  # no checkpoint head and no config value: as MindCV
        cfg.num_classes = len(classes)
    if len(classes) > cfg.num_classes:
        raise DataError(f"{val_dir} has {len(classes)} classes, the model only {cfg.num_classes} "
                        f"(set --num_classes)")
    return create_loader(cfg, val_dir, classes, settings, False, rank, world)


def with_val_amp(model, level, log):
    """``model`` cast for val_amp_level on Ascend/GPU; the CPU evaluates in float32."""
    if level == 'O0':
        return model
    import mindspore as ms
    if ms.get_context('device_target') == 'CPU':
        log(f"note: val_amp_level {level} is for Ascend/GPU: the CPU evaluates in float32")
        return model
    return ms.amp.auto_mixed_precision(model, level)


def _main(argv):
    os.environ.setdefault('GLOG_v', '3')
    cfg = parse_args(argv)
    from .cli import build_model, checkpoint_settings, parse_model_kwargs, take_from_checkpoint
    from .data import resolve_data_settings
    from .engine.context import launched_by_msrun, start
    from .engine.evaluate import evaluate

    # The recipes say distribute: True (they train under msrun); validating with such a YAML on
    # one device must still work, so a distributed run also needs a launcher's environment.
    if cfg.distribute and not launched_by_msrun():
        print("note: distribute is on but validate.py was not started by msrun: evaluating on "
              "this device alone", file=sys.stderr)
    job = start(cfg.device_target, cfg.mode, cfg.jit_level,
                cfg.distribute and launched_by_msrun())
    rank, world = job.rank, job.world
    say = (lambda *a: print(*a, file=sys.stderr)) if cfg.json else print
    log = say if rank == 0 else (lambda *a: None)
    if not cfg.data_dir:
        raise UsageError("--data_dir is required (a folder holding "
                         f"{cfg.val_split}/<class>/<image>)")
    from .data import find_classes
    find_classes(os.path.join(cfg.data_dir, cfg.val_split))  # a wrong --data_dir, said first
    # the variant's eval transform unless overridden; data errors surface before any build
    ckpt = cfg.ckpt_path or (cfg.pretrained if isinstance(cfg.pretrained, str) else None)
    pretrained = cfg.pretrained is True and not ckpt
    if not ckpt and not pretrained and not cfg.random_weights:
        raise UsageError("no weights to evaluate: pass --ckpt_path FILE or --pretrained (or "
                         "--random_weights to score an untrained model)")
    # the checkpoint's head decides the class count (a fresh 1000-way head would score 0%)
    cfg.ckpt_path = ckpt
    info = checkpoint_settings(cfg)
    for note in take_from_checkpoint(cfg, info, given=cfg.command_line):
        log(f"note: {note}")
    checkpoint_settings_win(cfg, info, log)
    settings = resolve_data_settings(cfg, cfg.model)
    data = eval_data(cfg, settings, rank, world, info.get('class_names'))
    cfg.use_ema = choose_ema(cfg, ckpt, info, log)
    model = build_model(cfg.model, ckpt, cfg.num_classes, cfg.in_channels, cfg.use_ema,
                        parse_model_kwargs(cfg.model_kwargs), log=log,
                        pretrained=pretrained)
    model = with_val_amp(model, cfg.val_amp_level, log)
    began = time.time()
    summary, bad = evaluate(model, data, world)
    for path in bad:
        say(f"skipped unreadable image: {path}")
    size, crop_pct, interpolation = settings.image_size, settings.crop_pct, settings.interpolation
    result = dict(model=cfg.model, ckpt_path=ckpt, ema=cfg.use_ema, data_dir=cfg.data_dir,
                  split=cfg.val_split, image_size=size, crop_pct=crop_pct,
                  crop_mode=settings.crop_mode, interpolation=interpolation, **summary,
                  ranks=world, seconds=round(time.time() - began, 2))
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


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
