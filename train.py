"""Train or fine-tune CoaT from a YAML config (MindCV's keys; every key is also a flag).

    msrun --worker_num 8 --local_worker_num 8 python train.py \
        -c configs/coat/coat_lite_tiny_ascend.yaml --data_dir /path/to/imagenet
    python train.py -c configs/coat/coat_lite_medium_384_ascend.yaml --data_dir DIR \
        --distribute False --ckpt_path coat_lite_medium.pth
    python train.py -c ... --resume ckpt/coat_lite_tiny-latest.ckpt     # continue exactly

Debug hook: with MINDCOAT_RANK_WEIGHTS_DIR set, every rank also writes its final weights to
DIR/rank_<N>.ckpt (to check that data-parallel ranks stay identical).
"""
import json
import os
import sys
from dataclasses import dataclass



@dataclass
class Run:
    rank: int = 0
    world: int = 1
    distributed: bool = False
    device: str = 'CPU'

    def log(self, *msg):
        if self.rank == 0:
            print(*msg, flush=True)


def setup_context(cfg):
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


def data_settings(cfg, model):
    """Input size, crop and normalisation: the config's, else the model's defaults."""
    d = model.default_cfg
    return dict(image_size=cfg.image_resize or d['input_size'][-1],
                crop_pct=cfg.crop_pct or d['crop_pct'], crop_mode=d.get('crop_mode', 'center'),
                interpolation=cfg.interpolation or d['interpolation'],
                mean=cfg.mean or d['mean'], std=cfg.std or d['std'])


def build(cfg, run):
    """Everything before the first step; raises one-line errors (bad data dir, model, weights)."""
    import mindspore as ms
    from mindcoat import create_model
    from mindcoat.data import check_split, find_classes
    from mindcoat.engine import TrainStep, create_loss_scaler
    from mindcoat.optim import AdamW, EMA, split_decay

    if not cfg.data_dir:
        raise ValueError("no data: pass --data_dir (a folder holding train/ and val/)")
    train_dir = os.path.join(cfg.data_dir, cfg.train_split)
    val_dir = os.path.join(cfg.data_dir, cfg.val_split)
    classes = find_classes(train_dir)
    if cfg.val_while_train:
        check_split(val_dir, classes)
    if cfg.opt.lower() != 'adamw':
        raise ValueError(f"opt '{cfg.opt}': the CoaT recipe uses adamw (the only optimizer here)")
    if cfg.loss.lower() != 'ce':
        raise ValueError(f"loss '{cfg.loss}': only ce (soft-target cross entropy) is supported")

    ms.set_seed(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
                         **(cfg.model_kwargs or {}))
    weights = cfg.ckpt_path or (cfg.pretrained if isinstance(cfg.pretrained, str) else None)
    if cfg.pretrained is True and not weights:
        raise ValueError("pretrained: True needs a local file: pass --ckpt_path FILE (nothing is "
                         "downloaded)")
    if weights and not cfg.resume:
        from mindcoat.convert import load_weights
        load_weights(model, weights, use_ema=cfg.ckpt_use_ema, log=run.log)
    if run.device == 'CPU':
        run.log('CPU: training in float32 (amp and loss scaling are for Ascend/GPU; float16 is '
                'slower on the CPU and amp O1 fails there in MindSpore 2.10)')
        scaler = None
    else:
        if cfg.amp_level not in ('O0', 'O1', 'O2', 'O3'):
            raise ValueError(f"amp_level must be O0, O1, O2 or O3, got '{cfg.amp_level}'")
        if cfg.amp_level != 'O0':
            model = ms.amp.auto_mixed_precision(model, cfg.amp_level)
        scaler = create_loss_scaler(cfg.loss_scale_type if cfg.amp_level != 'O0' else 'none',
                                    cfg.loss_scale)

    params = model.trainable_params()
    optimizer = AdamW(params, split_decay(params, model.no_weight_decay_names(),
                                          cfg.weight_decay, cfg.filter_bias_and_bn),
                      betas=tuple(cfg.betas), eps=cfg.eps)
    ema = EMA(params, cfg.ema_decay) if cfg.ema else None
    step = TrainStep(model, optimizer, ema, cfg.clip_value if cfg.clip_grad else 0.0, scaler,
                     cfg.drop_overflow_update, run.distributed)
    state = list(model.get_parameters()) + optimizer.state_params()
    state += list(ema.ema) if ema else []
    if scaler is not None:
        for name in ('scale_value', 'counter'):
            p = getattr(scaler, name, None)
            if isinstance(p, ms.Parameter):
                p.name = 'loss_scaler.' + name
                state.append(p)
    return model, step, ema, state, classes, train_dir, val_dir


def evaluate_run(cfg, run, model, ema, classes, val_dir, data):
    from mindcoat.data import create_dataset, create_transforms
    from mindcoat.engine import evaluate
    tf = create_transforms(False, data['image_size'], data['crop_pct'], data['crop_mode'],
                           data['interpolation'], data['mean'], data['std'])
    make = lambda: create_dataset(val_dir, classes, tf, cfg.batch_size, False, cfg.num_classes,  # noqa: E731
                                  cfg.in_channels, run.rank, run.world,
                                  num_parallel_workers=cfg.num_parallel_workers)
    loader = make()
    metrics = evaluate(model, loader, run.distributed)
    metrics['val_skipped'] = loader.bad_images.take()
    if ema is not None:  # the EMA weights, swapped in and back
        saved = {p.name: p.value().copy() for p in model.get_parameters()}
        ema_weights = ema.weights()
        for p in model.get_parameters():
            if p.name in ema_weights:
                p.set_data(ema_weights[p.name].value())
        ema_metrics = evaluate(model, make(), run.distributed)
        for p in model.get_parameters():
            p.set_data(saved[p.name])
        metrics.update({'ema_' + k: v for k, v in ema_metrics.items()})
    return metrics


def train(cfg):
    from mindcoat.data import create_dataset, create_transforms
    from mindcoat.engine import CheckpointKeeper, load_training_state, save_checkpoint, \
        train_one_epoch
    from mindcoat.optim import create_lr_schedule, scaled_lr

    run = setup_context(cfg)
    model, step, ema, state, classes, train_dir, val_dir = build(cfg, run)
    data = data_settings(cfg, model)
    train_tf = create_transforms(True, data['image_size'], data['crop_pct'], data['crop_mode'],
                                 data['interpolation'], data['mean'], data['std'], cfg.scale,
                                 cfg.ratio, cfg.hflip, cfg.color_jitter, cfg.auto_augment,
                                 cfg.re_prob)
    make_train = lambda epoch: create_dataset(  # noqa: E731
        train_dir, classes, train_tf, cfg.batch_size, True, cfg.num_classes, cfg.in_channels,
        run.rank, run.world, cfg.seed, epoch, cfg.shuffle, cfg.aug_repeats, cfg.label_smoothing,
        cfg.mixup, cfg.cutmix, cfg.cutmix_prob, cfg.mixup_switch_prob, cfg.drop_remainder,
        cfg.num_parallel_workers)
    per_rank = make_train(0).num_samples
    steps_per_epoch = per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{train_dir}: {per_rank} images per device is less than one batch of "
                         f"{cfg.batch_size}")
    global_batch = cfg.batch_size * run.world
    lr = scaled_lr(cfg.lr, global_batch, cfg.lr_base_batch)
    lrs = create_lr_schedule(cfg.scheduler, lr, steps_per_epoch, cfg.epoch_size, cfg.min_lr,
                             cfg.warmup_epochs, cfg.warmup_lr, cfg.warmup_factor,
                             cfg.decay_epochs, cfg.cooldown_epochs)
    start_epoch, best = 0, 0.0
    if cfg.resume:
        start_epoch, _, best = load_training_state(cfg.resume, state)
        run.log(f'resumed from {cfg.resume} at the end of epoch {start_epoch}')
    if cfg.dataset_sink_mode:
        run.log('dataset_sink_mode: ignored, the loop feeds each step (per-step lr)')
    run.log(f'{cfg.model}: {len(classes)} classes, {per_rank * run.world} training images per '
            f'epoch, {steps_per_epoch} steps x {global_batch} images ({run.world} device(s) x '
            f'{cfg.batch_size}), peak lr {lr:.3e}, {cfg.epoch_size} epochs on {run.device}')

    keeper = CheckpointKeeper(cfg.ckpt_save_dir, cfg.model, cfg.ckpt_save_interval,
                              cfg.keep_checkpoint_max, cfg.ckpt_save_policy)
    log_path = os.path.join(cfg.ckpt_save_dir, 'log.jsonl')
    if run.rank == 0:
        os.makedirs(cfg.ckpt_save_dir, exist_ok=True)
        _truncate_log(log_path, start_epoch)
    config = {k: v for k, v in vars(cfg).items()}
    for epoch in range(start_epoch, cfg.epoch_size):
        loader = make_train(epoch)
        record = {'epoch': epoch + 1}
        record.update(train_one_epoch(step, loader, lrs, epoch, steps_per_epoch,
                                      show=run.rank == 0, log_interval=cfg.log_interval,
                                      log=run.log))
        skipped = loader.bad_images.take()
        if skipped:
            print(f'[rank {run.rank}] epoch {epoch + 1}: skipped {len(skipped)} unreadable '
                  f'image(s): {", ".join(skipped)}', flush=True)
        record['train_skipped'] = len(skipped)
        last = epoch + 1 == cfg.epoch_size
        if cfg.val_while_train and ((epoch + 1) % cfg.val_interval == 0 or last):
            metrics = evaluate_run(cfg, run, model, ema, classes, val_dir, data)
            if metrics.pop('val_skipped', None):
                run.log('validation skipped unreadable images')
            metrics.pop('ema_val_skipped', None)
            record.update(metrics)
        top1 = max(record.get('val_top1', -1.0), record.get('ema_val_top1', -1.0))
        summary = (f"epoch {epoch + 1}/{cfg.epoch_size}  loss {record['train_loss']:.4f}  "
                   f"lr {record['lr']:.3e}  {record['images_per_sec'] * run.world:.1f} img/s  "
                   f"{record['epoch_time']:.1f}s")
        if 'val_top1' in record:
            summary += f"  val top-1 {record['val_top1']:.2f}  top-5 {record['val_top5']:.2f}"
        if 'ema_val_top1' in record:
            summary += f"  (EMA top-1 {record['ema_val_top1']:.2f})"
        run.log(summary)
        is_best = top1 > best
        best = max(best, top1)
        if run.rank == 0:
            save = lambda path: save_checkpoint(path, state, epoch + 1,  # noqa: E731
                                                (epoch + 1) * steps_per_epoch, best, config)
            if is_best:
                save(keeper.path('best'))
            keeper.save_epoch(epoch + 1, top1, save)
            with open(log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')
    if os.environ.get('MINDCOAT_RANK_WEIGHTS_DIR'):
        save_checkpoint(os.path.join(os.environ['MINDCOAT_RANK_WEIGHTS_DIR'],
                                     f'rank_{run.rank}.ckpt'), state, cfg.epoch_size, 0, best, {})
    return model


def _truncate_log(path, start_epoch):
    """On resume, drop log lines of epochs that will run again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)['epoch'] <= start_epoch]
    with open(path, 'w') as f:
        f.writelines(lines)


def main(argv=None):
    os.environ.setdefault('GLOG_v', '3')
    from mindcoat.config import ConfigError, parse_config
    try:
        cfg = parse_config(argv)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    from mindcoat.convert import CheckpointError
    from mindcoat.data import DataError
    from mindcoat.engine import ResumeError
    try:
        train(cfg)
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
