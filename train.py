"""Train or fine-tune CoaT from a YAML config (MindCV's keys; every key is also a flag).

    msrun --worker_num 8 --local_worker_num 8 python train.py \
        -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet
    python train.py -c configs/coat/coat_lite_medium_384_ascend.yaml --data_dir DIR \
        --distribute False --ckpt_path coat_lite_medium.pth
    python train.py -c ... --resume ckpt/coat_lite_tiny-latest.ckpt     # continue exactly

Debug hook: with MINDCOAT_RANK_WEIGHTS_DIR set, every rank also writes its final weights to
DIR/rank_<N>.ckpt (to check that data-parallel ranks stay identical).
"""
import os
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    rank: int = 0
    world: int = 1
    distributed: bool = False
    device: str = 'CPU'
    log_file: str = None  # rank 0's copy of what it prints: ckpt_save_dir/train.log
    early: list = field(default_factory=list)  # lines printed before the folder exists

    def log(self, *msg):
        if self.rank == 0:
            print(*msg, flush=True)
            line = ' '.join([time.strftime('%Y-%m-%d %H:%M:%S')] + [str(m) for m in msg])
            if self.log_file:
                with open(self.log_file, 'a') as f:
                    print(line, file=f)
            else:
                self.early.append(line)

    def open_log(self, path):
        self.log_file = path
        with open(path, 'a') as f:
            f.writelines(line + '\n' for line in self.early)
        self.early = []


def check_launcher(cfg):
    """distribute must match how the process was started (msrun sets MS_ROLE / MS_WORKER_NUM)."""
    from mindcoat.config import ConfigError
    launched = 'MS_ROLE' in os.environ or 'RANK_TABLE_FILE' in os.environ
    workers = int(os.environ.get('MS_WORKER_NUM') or 1)
    if cfg.distribute and not launched:
        raise ConfigError("distribute is True but train.py was not started by msrun: launch it "
                          "with msrun --worker_num N --local_worker_num N python train.py ..., or "
                          "pass --distribute False to train on one device")
    if launched and not cfg.distribute and workers > 1:
        raise ConfigError(f"started by msrun with {workers} workers but distribute is False: pass "
                          f"--distribute True (otherwise each worker trains the whole run alone "
                          f"and they overwrite each other's files)")


def setup_context(cfg):
    check_launcher(cfg)
    import mindspore as ms
    if cfg.device_target != 'auto':
        ms.set_device(cfg.device_target)
    device = ms.get_context('device_target')
    ms.set_context(mode=ms.GRAPH_MODE if cfg.mode == 0 else ms.PYNATIVE_MODE)
    jit_level = cfg.jit_level or ('O2' if device == 'Ascend' else 'O0')
    ms.set_context(jit_config={'jit_level': jit_level})
    run = Run(device=device)
    if cfg.distribute:
        from mindspore.communication import get_group_size, get_rank, init
        init()
        run.rank, run.world, run.distributed = get_rank(), get_group_size(), True
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True, device_num=run.world)
    return run


def build(cfg, run):
    """Everything before the first step; raises one-line errors (bad data dir, model, weights).
    Returns (model, network: the model as evaluated (under amp on Ascend/GPU), step, ema, state,
    classes, train_dir, val_dir)."""
    from mindcoat import create_model
    from mindcoat.data import DataError, check_split, find_classes
    from mindcoat.engine import build_seeded, create_train_step, training_state

    if not cfg.data_dir:
        raise ValueError("no data: pass --data_dir (a folder holding train/ and val/)")
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    val_dir = os.path.join(cfg.data_dir, cfg.val_split)
    classes = find_classes(train_dir)
    if cfg.num_classes is None:  # set by neither the YAML nor the command line: as MindCV
        cfg.num_classes = len(classes)
        run.log(f'num_classes {cfg.num_classes}: the class folders of {train_dir}')
    if len(classes) > cfg.num_classes:
        raise DataError(f"{train_dir} has {len(classes)} class folders, more than num_classes "
                        f"{cfg.num_classes}: pass --num_classes {len(classes)}")
    if cfg.val_while_train:
        check_split(val_dir, classes)
    weights = {} if cfg.resume else dict(  # a resume restores every weight itself
        pretrained=cfg.pretrained or False, checkpoint_path=cfg.ckpt_path or '',
        ema=cfg.ckpt_use_ema)
    try:
        model = build_seeded(lambda: create_model(
            cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels, log=run.log,
            drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, **weights,
            **(cfg.model_kwargs or {})), cfg.seed, run.rank)
    except TypeError as e:  # create_model names the argument it does not know
        raise ValueError(f"model settings: {e}") from None
    if run.device == 'CPU':
        run.log('CPU: training in float32 (amp and loss scaling are for Ascend/GPU; float16 is '
                'slower on the CPU and amp O1 fails there in MindSpore 2.10)')
        amp_level = 'O0'
    else:
        amp_level = cfg.amp_level
    network, step, optimizer, ema, scaler = create_train_step(model, cfg, amp_level,
                                                              run.distributed)
    state = training_state(model, optimizer, ema, scaler, step)
    return model, network, step, ema, state, classes, train_dir, val_dir


def evaluate_run(cfg, run, model, network, ema, classes, val_dir, settings):
    """The raw model's val loss/top-1/top-5, and the EMA's (``ema_val_*``) when there is one.
    ``network``: ``model`` as it runs (amp); the EMA weights are swapped into ``model``."""
    from mindcoat.data import create_loader
    from mindcoat.engine import evaluate

    def run_eval():
        loader = create_loader(cfg, val_dir, classes, settings, False, run.rank, run.world)
        summary, skipped = evaluate(network, loader, run.world)
        for path in skipped:
            print(f'[rank {run.rank}] validation skipped unreadable image: {path}', flush=True)
        return {'val_loss': summary['loss'], 'val_top1': summary['top1'],
                'val_top5': summary['top5'], 'val_images': summary['num_images'],
                'val_skipped': summary['skipped_images']}

    metrics = run_eval()
    if ema is not None:
        with ema.swapped_into(model):
            metrics.update({'ema_' + k: v for k, v in run_eval().items()
                            if k in ('val_loss', 'val_top1', 'val_top5')})
    return metrics


def describe_repeats(loader, cfg, world):
    if loader.aug_repeats:
        return (f'repeated augmentation: each image {loader.aug_repeats} times per epoch, spread '
                f'over the {world} ranks (RASampler)')
    if (cfg.aug_repeats or 0) > 1:  # the official main.py would repeat on one GPU too
        return (f'repeated augmentation off on one device: aug_repeats {cfg.aug_repeats} spreads '
                f'copies of an image over ranks (aug_repeats_single_device: True applies it here '
                f'too, as the official RASampler does on one GPU)')
    return 'repeated augmentation off'


def train(cfg):
    from mindcoat.data import DataError, create_loader, resolve_data_settings
    from mindcoat.engine import CheckpointKeeper, EpochLog, EpochShort, NonFiniteLoss, \
        EpochSummary, check_run_dir, load_training_state, prepare_run_dir, save_checkpoint, \
        sink_supported, train_one_epoch
    from mindcoat.optim import lr_schedule_for

    run = setup_context(cfg)
    if run.rank == 0:  # before anything is built: a refused folder costs no compile
        check_run_dir(cfg.ckpt_save_dir, cfg.model, bool(cfg.resume), cfg.overwrite)
    model, network, step, ema, state, classes, train_dir, val_dir = build(cfg, run)
    if run.rank == 0:  # only now: a start that fails leaves the folder as it was
        prepare_run_dir(cfg.ckpt_save_dir, cfg.model, bool(cfg.resume), cfg.overwrite)
        run.open_log(os.path.join(cfg.ckpt_save_dir, 'train.log'))
    settings = resolve_data_settings(cfg, cfg.model)

    def make_train(epoch):
        return create_loader(cfg, train_dir, classes, settings, True, run.rank, run.world, epoch)

    first = make_train(0)
    steps_per_epoch = first.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{train_dir}: {first.num_samples} images per device is less than one "
                         f"batch of {cfg.batch_size}")
    lr, lrs = lr_schedule_for(cfg, steps_per_epoch, run.world)
    step.set_lr_schedule(lrs)
    start_epoch, best = 0, 0.0
    if cfg.resume:
        start_epoch, saved_step, best = load_training_state(cfg.resume, state)
        run.log(f'resumed from {cfg.resume} at the end of epoch {start_epoch}')
        if saved_step != start_epoch * steps_per_epoch:  # another batch size or device count
            run.log(f'the checkpoint is at global step {saved_step}; this run has '
                    f'{steps_per_epoch} steps per epoch: continuing the schedule from step '
                    f'{start_epoch * steps_per_epoch}')
        step.set_global_step(start_epoch * steps_per_epoch)
    sink = cfg.dataset_sink_mode and sink_supported()
    if cfg.dataset_sink_mode and not sink:
        run.log(f'dataset_sink_mode: MindSpore has no data sink on {run.device} (Ascend and GPU '
                f'only): feeding each batch from the host')
    global_batch = cfg.batch_size * run.world
    run.log(f'{cfg.model}: {len(classes)} classes, {first.num_samples * run.world} training '
            f'images per epoch, {steps_per_epoch} steps x {global_batch} images ({run.world} '
            f'device(s) x {cfg.batch_size}), peak lr {lr:.3e} ({cfg.scheduler}), '
            f'{cfg.epoch_size} epochs on {run.device}')
    run.log(describe_repeats(first, cfg, run.world))

    epoch_log = EpochLog(cfg.ckpt_save_dir)
    logged = epoch_log.keep_until(start_epoch) if run.rank == 0 else []
    keeper = CheckpointKeeper(cfg.ckpt_save_dir, cfg.model, cfg.ckpt_save_interval,
                              cfg.keep_checkpoint_max, cfg.ckpt_save_policy,
                              scores={r['epoch']: r.get('val_top1', -1.0) for r in logged})
    # stored in every checkpoint: predict/export/validate read the model, settings and names
    config = dict(vars(cfg), class_names=classes)
    config.pop('command_line', None)
    config.pop('given', None)
    summary = EpochSummary(cfg.ckpt_save_dir if cfg.summary and run.rank == 0 else None, run.log)
    try:
        for epoch in range(start_epoch, cfg.epoch_size):
            loader = first if epoch == 0 else make_train(epoch)
            record = {'epoch': epoch + 1}
            try:
                record.update(train_one_epoch(step, loader, lrs, epoch, steps_per_epoch,
                                              show=run.rank == 0, log_interval=cfg.log_interval,
                                              log=run.log, sink=sink))
            except EpochShort as e:
                bad = loader.bad_images.take()
                raise DataError(f"{e}: {train_dir} has {len(bad)} unreadable image(s): "
                                f"{', '.join(bad)}; remove or replace them") from None
            except NonFiniteLoss as e:
                kept = keeper.path('latest')
                raise NonFiniteLoss(f"{e}: training stopped; " + (
                    f"{kept} (end of epoch {epoch}) is kept" if os.path.exists(kept)
                    else "no checkpoint was written yet")) from None
            skipped = loader.bad_images.take()
            if skipped:
                print(f'[rank {run.rank}] epoch {epoch + 1}: skipped {len(skipped)} unreadable '
                      f'image(s): {", ".join(skipped)}', flush=True)
            record['train_skipped'] = len(skipped)
            last = epoch + 1 == cfg.epoch_size
            if cfg.val_while_train and ((epoch + 1) % cfg.val_interval == 0 or last):
                record.update(evaluate_run(cfg, run, model, network, ema, classes, val_dir,
                                           settings))
            run.log(_summary(record, cfg, run))
            # "best" is the raw model's top-1 (the official trainer reports the raw model); a NaN
            # top-1 never qualifies
            top1 = record.get('val_top1', -1.0)
            is_best = top1 > best
            best = max(best, top1) if top1 == top1 else best
            if run.rank == 0:
                global_step = int(step.global_step.asnumpy())

                def save(path):
                    save_checkpoint(path, state, epoch + 1, global_step, best, config)
                epoch_log.append(record)  # first: a checkpoint never holds an epoch the log lacks
                summary.write(record)
                if is_best:
                    save(keeper.path('best'))
                keeper.save_epoch(epoch + 1, top1, save)
    finally:
        summary.close()
    if os.environ.get('MINDCOAT_RANK_WEIGHTS_DIR'):
        save_checkpoint(os.path.join(os.environ['MINDCOAT_RANK_WEIGHTS_DIR'],
                                     f'rank_{run.rank}.ckpt'), state, cfg.epoch_size, 0, best, {})
    return model


def _summary(record, cfg, run):
    text = (f"epoch {record['epoch']}/{cfg.epoch_size}  loss {record['train_loss']:.4f}  "
            f"lr {record['lr']:.3e}  {record['images_per_sec'] * run.world:.1f} img/s  "
            f"{record['epoch_time']:.1f}s")
    if 'val_top1' in record:
        text += f"  val top-1 {record['val_top1']:.2f}  top-5 {record['val_top5']:.2f}"
    if 'ema_val_top1' in record:
        text += f"  (EMA top-1 {record['ema_val_top1']:.2f})"
    return text


def main(argv=None):
    os.environ.setdefault('GLOG_v', '3')
    from mindcoat.config import ConfigError, check_training, parse_config
    try:
        cfg = parse_config(argv)
        check_training(cfg)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    from mindcoat.convert import CheckpointError
    from mindcoat.data import DataError
    from mindcoat.engine import CheckpointWriteError, NonFiniteLoss, ResumeError
    try:
        train(cfg)
    except (NonFiniteLoss, CheckpointWriteError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except (ConfigError, DataError, ResumeError, CheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except ValueError as e:  # setup problems (model name, sizes, settings): one line
        if 'Traceback' in str(e) or '\n' in str(e).strip():
            raise
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
