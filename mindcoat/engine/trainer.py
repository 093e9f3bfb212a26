"""Training a CoaT: everything between a checked config and the last checkpoint, as one linear
procedure (``train``). The entry point (``mindcoat.train``) parses the config and calls it.

``cfg`` holds the config's keys (``mindcoat.config``): the model, data, optimizer, schedule,
checkpoint and logging settings of the run.

Debug hook: with MINDCOAT_RANK_WEIGHTS_DIR set, every rank also writes its final weights to
DIR/rank_<N>.ckpt (to check that data-parallel ranks stay identical).
"""
import os

from ..errors import CheckpointError, DataError, Interrupted, NonFiniteLoss, ResumeError, \
    UsageError
from ..fileio import regular_file
from .context import CPU_FLOAT32, check_launcher, interrupts_held, start, training_amp_level


def check_data(cfg, run):
    """The data folders, before anything else: (classes, train_dir, val_dir). num_classes None
    (set by neither the config nor the command line) is the training split's class count, as in
    MindCV."""
    from ..data import check_split, find_classes
    if not cfg.data_dir:
        raise UsageError("no data: pass --data_dir (a folder holding train/ and val/)")
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    val_dir = os.path.join(cfg.data_dir, cfg.val_split)
    classes = find_classes(train_dir)
    if cfg.num_classes is None:
        cfg.num_classes = len(classes)
        run.log(f'num_classes {cfg.num_classes}: the class folders of {train_dir}')
    if len(classes) > cfg.num_classes:
        raise DataError(f"{train_dir} has {len(classes)} class folders, more than num_classes "
                        f"{cfg.num_classes}: pass --num_classes {len(classes)}")
    if cfg.val_while_train:
        check_split(val_dir, classes)
    return classes, train_dir, val_dir


def check_weights_source(cfg):
    """The file a run starts from exists and is a file (a download is checked when it runs)."""
    if cfg.resume:
        regular_file(cfg.resume, 'resume checkpoint', ResumeError)
    elif cfg.ckpt_path:
        regular_file(cfg.ckpt_path, 'checkpoint', CheckpointError)
    elif isinstance(cfg.pretrained, str) and not cfg.pretrained.startswith(('http://',
                                                                           'https://')):
        regular_file(cfg.pretrained, 'pretrained weights', CheckpointError)


def build(cfg, run, data=None):
    """Everything before the first step; raises one-line errors (bad data dir, model, weights).
    ``data``: check_data's result, if already checked. Returns (model, network: the model as
    evaluated (under amp on Ascend/GPU), step, ema, state, classes, train_dir, val_dir)."""
    from ..factory import create_model
    from .checkpoint import training_state
    from .seeding import build_seeded
    from .train_step import create_train_step

    classes, train_dir, val_dir = data or check_data(cfg, run)
    weights = {} if cfg.resume else dict(  # a resume restores every weight itself
        pretrained=cfg.pretrained or False, checkpoint_path=cfg.ckpt_path or '',
        ema=cfg.ckpt_use_ema)
    try:
        model = build_seeded(lambda: create_model(
            cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels, log=run.log,
            drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, **weights,
            **(cfg.model_kwargs or {})), cfg.seed, run.rank)
    except TypeError as e:  # create_model names the argument it does not know
        raise UsageError(f"model settings: {e}") from None
    amp_level = training_amp_level(run.device, cfg.amp_level)
    if amp_level != cfg.amp_level:
        run.log(CPU_FLOAT32)
    network, step, optimizer, ema, scaler = create_train_step(model, cfg, amp_level,
                                                              run.distributed)
    state = training_state(model, optimizer, ema, scaler, step)
    return model, network, step, ema, state, classes, train_dir, val_dir


def evaluate_run(cfg, run, model, network, ema, classes, val_dir, settings):
    """The raw model's val loss/top-1/top-5, and the EMA's (``ema_val_*``) when there is one.
    ``network``: ``model`` as it runs (amp); the EMA weights are swapped into ``model``."""
    from ..data import create_loader
    from .evaluate import evaluate

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


def _schedule_notes(cfg, lr, lrs, steps):
    """Warnings for a schedule or an EMA that does not fit the run's length, and how the peak
    lr came about."""
    from ..optim import ema_initial_share, unfinished_decay
    notes = []
    unfinished = unfinished_decay(cfg, lr, lrs)
    if unfinished:
        notes.append(f'warning: {unfinished}')
    if cfg.ema:
        share = ema_initial_share(cfg.ema_decay, steps, cfg.ema_warmup)
        if share > 0.5:
            window = 1 / (1 - cfg.ema_decay)
            notes.append(
                f'warning: EMA decay {cfg.ema_decay:g} averages over ~{window:,.0f} steps; this '
                f'run has {steps:,}: at its end the EMA weights are still {share:.0%} the '
                f'initial ones; lower --ema_decay ({max(0.0, 1 - 10 / steps):.4g} averages over '
                f'a tenth of the run) or pass --ema False')
    return notes


def _peak_lr_text(cfg, lr, global_batch):
    if cfg.lr_base_batch:
        return (f'peak lr {lr:.3e} ({cfg.lr:g} per {cfg.lr_base_batch} images x global batch '
                f'{global_batch}; lr_base_batch None takes lr as is)')
    return f'peak lr {lr:.3e}'


def _stored_config(cfg, classes):
    """What every checkpoint stores of the run: its resolved config and class names (predict,
    export and validate read the model and its settings from it, --resume the whole run)."""
    config = dict(vars(cfg), class_names=list(classes))
    for transient in ('command_line', 'given'):
        config.pop(transient, None)
    return config


def train(cfg, notes=()):
    """The run ``cfg`` describes, from the first epoch or (``cfg.resume``) where it stopped.
    ``notes``: lines for the log from the config layer (what a resume restored)."""
    from ..data import create_loader, resolve_data_settings
    from ..optim import lr_schedule_for
    from .checkpoint import load_training_state, save_checkpoint
    from .loop import EpochShort, sink_supported, train_one_epoch
    from .run_dir import CheckpointKeeper, EpochLog, check_run_dir, prepare_run_dir, \
        write_run_config
    from .summary import EpochSummary

    check_launcher(cfg.distribute)
    run = start(cfg.device_target, cfg.mode, cfg.jit_level, cfg.distribute, training=True)
    for note in notes:
        run.log(note)
    # what the user typed is checked before the run folder: a mistake is named as itself
    data = check_data(cfg, run)
    check_weights_source(cfg)
    own_folder = bool(cfg.resume) and os.path.realpath(os.path.dirname(os.path.abspath(
        cfg.resume))) == os.path.realpath(cfg.ckpt_save_dir)
    if run.rank == 0:  # before anything is built: a refused folder costs no compile
        check_run_dir(cfg.ckpt_save_dir, cfg.model, own_folder, cfg.overwrite)
    model, network, step, ema, state, classes, train_dir, val_dir = build(cfg, run, data)
    if run.rank == 0:  # only now: a start that fails leaves the folder as it was
        prepare_run_dir(cfg.ckpt_save_dir, cfg.model, own_folder, cfg.overwrite)
        run.open_log(os.path.join(cfg.ckpt_save_dir, 'train.log'))
    settings = resolve_data_settings(cfg, cfg.model)

    def make_train(epoch):
        return create_loader(cfg, train_dir, classes, settings, True, run.rank, run.world, epoch)

    first = make_train(0)
    steps_per_epoch = first.num_samples // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(f"{train_dir}: {first.num_samples} images per device is less than one "
                        f"batch of {cfg.batch_size}")
    lr, lrs = lr_schedule_for(cfg, steps_per_epoch, run.world)
    step.set_lr_schedule(lrs)
    start_epoch, best = 0, 0.0
    if cfg.resume:
        start_epoch, saved_step, best = load_training_state(cfg.resume, state)
        if start_epoch >= cfg.epoch_size:
            raise ResumeError(f"{cfg.resume} ends epoch {start_epoch} of a run of "
                              f"{cfg.epoch_size}: nothing is left to train (a longer run: "
                              f"--epoch_size {start_epoch + 1} or more)")
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
            f'device(s) x {cfg.batch_size}), {_peak_lr_text(cfg, lr, global_batch)} '
            f'({cfg.scheduler}), {cfg.epoch_size} epochs on {run.device}')
    run.log(describe_repeats(first, cfg, run.world))
    for note in _schedule_notes(cfg, lr, lrs, steps_per_epoch * cfg.epoch_size):
        run.log(note)

    epoch_log = EpochLog(cfg.ckpt_save_dir)
    if run.rank == 0 and cfg.resume and not own_folder:  # a branch starts with the run's log
        epoch_log.copy_from(os.path.dirname(os.path.abspath(cfg.resume)), start_epoch)
    logged = epoch_log.keep_until(start_epoch) if run.rank == 0 else []
    keeper = CheckpointKeeper(cfg.ckpt_save_dir, cfg.model, cfg.ckpt_save_interval,
                              cfg.keep_checkpoint_max, cfg.ckpt_save_policy,
                              scores={r['epoch']: r.get('val_top1', -1.0) for r in logged})
    config = _stored_config(cfg, classes)
    if run.rank == 0:
        write_run_config(cfg.ckpt_save_dir, config)
    summary = EpochSummary(cfg.ckpt_save_dir if cfg.summary and run.rank == 0 else None, run.log)
    epoch, saved = start_epoch, start_epoch  # the epoch running, the last one -latest holds
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
                raise NonFiniteLoss(f"{e}: training stopped; "
                                    f"{_kept(keeper, saved, resume=False)}") from None
            skipped = loader.bad_images.take()
            if skipped:
                print(f'[rank {run.rank}] epoch {epoch + 1}: skipped {len(skipped)} unreadable '
                      f'image(s): {", ".join(skipped)}', flush=True)
            record['train_skipped'] = len(skipped)
            last = epoch + 1 == cfg.epoch_size
            if cfg.val_while_train and ((epoch + 1) % cfg.val_interval == 0 or last):
                record.update(evaluate_run(cfg, run, model, network, ema, classes, val_dir,
                                           settings))
                # validate evaluates the weights that did better here, unless told otherwise
                config['eval_weights'] = 'ema' if record.get('ema_val_top1', -1.0) > \
                    record['val_top1'] else 'model'
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
                with interrupts_held():
                    # the log first: a checkpoint never holds an epoch the log lacks
                    epoch_log.append(record)
                    summary.write(record)
                    if is_best:
                        save(keeper.path('best'))
                    keeper.save_epoch(epoch + 1, top1, save)
                    saved = epoch + 1
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted in epoch {epoch + 1}: {_kept(keeper, saved)}") from None
    finally:
        summary.close()
    if os.environ.get('MINDCOAT_RANK_WEIGHTS_DIR'):
        save_checkpoint(os.path.join(os.environ['MINDCOAT_RANK_WEIGHTS_DIR'],
                                     f'rank_{run.rank}.ckpt'), state, cfg.epoch_size, 0, best, {})
    return model


def _kept(keeper, epoch, resume=True):
    """What a stopped run leaves behind (-latest holds the end of ``epoch``), and how to go
    on."""
    kept = keeper.path('latest')
    if not os.path.exists(kept):
        return 'no checkpoint was written yet'
    return f'{kept} (end of epoch {epoch}) is kept' + \
        (f'; continue with --resume {kept}' if resume else '')


def _summary(record, cfg, run):
    text = (f"epoch {record['epoch']}/{cfg.epoch_size}  loss {record['train_loss']:.4f}  "
            f"lr {record['lr']:.3e}  {record['images_per_sec'] * run.world:.1f} img/s  "
            f"{record['epoch_time']:.1f}s")
    if 'val_top1' in record:
        text += f"  val top-1 {record['val_top1']:.2f}  top-5 {record['val_top5']:.2f}"
    if 'ema_val_top1' in record:
        text += f"  (EMA top-1 {record['ema_val_top1']:.2f})"
    return text
