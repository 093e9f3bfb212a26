"""Train or fine-tune CoaT from a YAML config (MindCV's keys; every key is also a flag).

    msrun --worker_num 8 --local_worker_num 8 python train.py \
        -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet
    python -m mindcoat.train -c configs/coat/finetune.yaml --data_dir my_folder --distribute False
    mindcoat-train --resume ckpt/coat_lite_tiny/coat_lite_tiny-latest.ckpt   # continue exactly

What is settled here, before the engine runs: the run's own settings when resuming
(mindcoat.config.resume), and the classifier's size against the training folders.
"""
import os
import sys

from .cli import run
from .errors import ConfigError, ResumeError
from .fileio import regular_file


def class_count_notes(cfg):
    """num_classes against the class folders of the training split. Not set anywhere: the
    folder count (MindCV's rule, in the engine). From a config file and not the folder count:
    refused (a recipe's 1000 on a 4-class folder would train a 1000-way head). Typed: smaller
    than the folder count is refused (in the engine), larger is a warning."""
    from .data import find_classes
    if cfg.num_classes is None or not cfg.data_dir:
        return []
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    if not os.path.isdir(train_dir):
        return []  # said by the engine's data check, after the launcher's
    count = len(find_classes(train_dir))
    if count == cfg.num_classes:
        return []
    if 'num_classes' not in vars(cfg.command_line) and not cfg.resume:
        raise ConfigError(f"{cfg.config or 'the config'} says num_classes {cfg.num_classes}, but "
                          f"{train_dir} has {count} class folders: pass --num_classes {count} "
                          f"(or --num_classes {cfg.num_classes} to train a {cfg.num_classes}-way "
                          f"head on them)")
    if cfg.num_classes > count:
        return [f"warning: num_classes {cfg.num_classes} for {count} class folders: "
                f"{cfg.num_classes - count} outputs of the head never see a training image"]
    return []


def resume_notes(cfg):
    """The run ``cfg.resume`` continues: its stored settings restored (see
    mindcoat.config.resume) and its class names checked against the training folders."""
    from .config.resume import restore_run_settings
    from .data import find_classes
    from .weights.checkpoint import read_train_config
    regular_file(cfg.resume, 'resume checkpoint', ResumeError)
    saved = read_train_config(cfg.resume)
    if saved is None:
        raise ResumeError(f"{cfg.resume} is not a mindcoat training checkpoint (use --ckpt_path to "
                          f"start from its weights instead)")
    notes = restore_run_settings(cfg, saved, cfg.resume)
    names = saved.get('class_names')
    if names and cfg.data_dir:
        train_dir = os.path.join(cfg.data_dir, cfg.train_split)
        found = find_classes(train_dir)
        if list(found) != list(names):
            raise ResumeError(f"{train_dir} has classes {', '.join(found[:5])}... but the run "
                              f"{cfg.resume} was trained on {', '.join(names[:5])}...: resume "
                              f"on the run's own data (--data_dir)")
    return notes


def _main(argv):
    os.environ.setdefault('GLOG_v', '3')
    from .config import check_training, parse_config
    from .engine.trainer import train
    cfg = parse_config(argv)
    notes = resume_notes(cfg) if cfg.resume else []
    check_training(cfg)
    notes += class_count_notes(cfg)
    train(cfg, notes)
    return 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
