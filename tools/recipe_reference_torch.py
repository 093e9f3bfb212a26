"""Dev-only reference trainer: the official CoaT recipe in PyTorch/timm, on an image folder.

What mlpc-ucsd/CoaT's src/main.py, engine.py and datasets.py do, with the timm pieces they call
(timm pins 0.3.2 there; this runs the installed timm, whose pieces used here behave the same for
these arguments): create_transform (RandomResizedCrop bicubic, flip 0.5, RandAugment
rand-m9-mstd0.5-inc1, random erasing 0.25 in pixel mode), the eval transform resize 256/224 x
size + center crop with PIL bicubic, batch-mode Mixup 0.8 / CutMix 1.0 with label smoothing 0.1
and SoftTargetCrossEntropy, AdamW with weight decay off 1-D parameters, biases and
model.no_weight_decay(), lr scaled by batch / 512, timm's CosineLRScheduler stepped once per
epoch (``lr_scheduler.step(epoch)`` after each epoch), a per-step EMA of the weights, float32
(the official --disable_amp path: there is no CUDA autocast on the CPU). The model is timm's
CoaT class built from coat_lite_tiny's design with the caller's overrides.

Two deliberate departures, both also taken by tools/compare_recipe.py's mindcoat config: one
process, so the sampler is DistributedSampler(num_replicas=1) with set_epoch every epoch (the
official loop calls set_epoch only when distributed), and no repeated augmentation (a multi-GPU
sampler). Pillow 11+ refuses posterize(bits=0), which timm's PosterizeIncreasing asks for at
magnitude 10; the Pillow of 2020 the official runs used returned a black image, so that is what
bits=0 gives here.

Run in the reference venv (never a mindcoat dependency), normally through compare_recipe.py:

    OMP_WAIT_POLICY=passive /tmp/torch/bin/python tools/recipe_reference_torch.py \
        --data_dir DIR --output result.json --epochs 4 --batch_size 64 --lr 1.6e-2 \
        --image_size 64 --warmup_epochs 0 --model_ema_decay 0.97 \
        --model_kwargs '{"embed_dims": [32, 64, 128, 160], "serial_depths": [1, 1, 1, 1]}'
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data import auto_augment
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.loss import SoftTargetCrossEntropy
from timm.models import create_model
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEma, accuracy
from torchvision import datasets, transforms


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data_dir', required=True, help='folder with train/<class>/ and val/<class>/')
    p.add_argument('--output', required=True, help='JSON result file')
    p.add_argument('--model', default='coat_lite_tiny', help="timm's name of the design")
    p.add_argument('--model_kwargs', default='{}', help='JSON architecture overrides')
    p.add_argument('--image_size', type=int, default=224)
    p.add_argument('--epochs', type=int, default=300)
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--lr', type=float, default=5e-4, help='per 512 images, as in main.py')
    p.add_argument('--min_lr', type=float, default=1e-5)
    p.add_argument('--warmup_lr', type=float, default=1e-6)
    p.add_argument('--warmup_epochs', type=int, default=5)
    p.add_argument('--weight_decay', type=float, default=0.05)
    p.add_argument('--opt_eps', type=float, default=1e-8)
    p.add_argument('--drop_path', type=float, default=0.0)
    p.add_argument('--aa', default='rand-m9-mstd0.5-inc1')
    p.add_argument('--color_jitter', type=float, default=0.4)
    p.add_argument('--reprob', type=float, default=0.25)
    p.add_argument('--remode', default='pixel')
    p.add_argument('--mixup', type=float, default=0.8)
    p.add_argument('--cutmix', type=float, default=1.0)
    p.add_argument('--mixup_prob', type=float, default=1.0)
    p.add_argument('--mixup_switch_prob', type=float, default=0.5)
    p.add_argument('--smoothing', type=float, default=0.1)
    p.add_argument('--model_ema_decay', type=float, default=0.99996, help='0: no EMA')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--num_workers', type=int, default=2)
    p.add_argument('--eval_interval', type=int, default=10,
                   help='epochs between evaluations (main.py: --save_freq 10); always the last')
    return p.parse_args(argv)


def posterize_as_pillow_2020(img, bits_to_keep, **kwargs):
    """timm's posterize, except that keeping 0 bits gives black (the Pillow of 2020) where
    Pillow 11+ raises."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return TIMM_POSTERIZE(img, bits_to_keep, **kwargs)


TIMM_POSTERIZE = auto_augment.posterize


def patch_posterize():
    for name in ('Posterize', 'PosterizeIncreasing', 'PosterizeOriginal'):
        auto_augment.NAME_TO_OP[name] = posterize_as_pillow_2020


def train_transform(args):
    """datasets.build_transform(is_train=True): the ImageNet path (input_size > 32)."""
    if args.image_size <= 32:
        raise SystemExit('error: --image_size must exceed 32 (the official code switches to a '
                         'CIFAR-style RandomCrop at 32 and below)')
    return create_transform(input_size=args.image_size, is_training=True,
                            color_jitter=args.color_jitter, auto_augment=args.aa,
                            interpolation='bicubic', re_prob=args.reprob, re_mode=args.remode,
                            re_count=1)


def eval_transform(args):
    """datasets.build_transform(is_train=False): resize to 256/224 x size, center crop."""
    return transforms.Compose([
        transforms.Resize(int((256 / 224) * args.image_size),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(args.image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def build_loaders(args):
    train_set = datasets.ImageFolder(os.path.join(args.data_dir, 'train'), train_transform(args))
    val_set = datasets.ImageFolder(os.path.join(args.data_dir, 'val'), eval_transform(args))
    if train_set.classes != val_set.classes:
        raise SystemExit(f'error: train and val classes differ under {args.data_dir}')
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True)
    train = torch.utils.data.DataLoader(train_set, sampler=sampler, batch_size=args.batch_size,
                                        num_workers=args.num_workers, drop_last=True)
    val = torch.utils.data.DataLoader(val_set, batch_size=int(1.5 * args.batch_size),
                                      shuffle=False, num_workers=args.num_workers,
                                      drop_last=False)
    return train, val, len(train_set.classes)


def count_decay_split(optimizer):
    """(decayed, not decayed) parameter counts from the optimizer's groups."""
    decayed = sum(p.numel() for g in optimizer.param_groups if g['weight_decay'] > 0
                  for p in g['params'])
    total = sum(p.numel() for g in optimizer.param_groups for p in g['params'])
    return decayed, total - decayed


def train_one_epoch(model, criterion, loader, optimizer, model_ema, mixup_fn):
    """engine.train_one_epoch with disable_amp: mix, forward, loss, step, EMA update."""
    model.train()
    losses = []
    for samples, targets in loader:
        samples, targets = mixup_fn(samples, targets)
        loss = criterion(model(samples), targets)
        if not math.isfinite(loss.item()):
            raise SystemExit(f'error: loss is {loss.item()}, stopping training')
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model_ema is not None:
            model_ema.update(model)
        losses.append(loss.item())
    return float(np.mean(losses))


@torch.no_grad()
def evaluate(model, loader):
    """engine.evaluate: top-1/top-5 (%) and cross-entropy averaged over images."""
    model.eval()
    ce = torch.nn.CrossEntropyLoss()
    sums, count = np.zeros(3), 0
    for images, target in loader:
        output = model(images)
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        n = images.shape[0]
        sums += np.array([acc1.item(), acc5.item(), ce(output, target).item()]) * n
        count += n
    top1, top5, loss = sums / count
    return dict(top1=top1, top5=top5, loss=loss, num_images=count)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # main.py: seed + rank, rank 0
    np.random.seed(args.seed)
    patch_posterize()
    train_loader, val_loader, num_classes = build_loaders(args)
    mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                     switch_prob=args.mixup_switch_prob, mode='batch',
                     label_smoothing=args.smoothing, num_classes=num_classes)
    model = create_model(args.model, pretrained=False, num_classes=num_classes,
                         drop_rate=0.0, drop_path_rate=args.drop_path, img_size=args.image_size,
                         **json.loads(args.model_kwargs))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model_ema = ModelEma(model, decay=args.model_ema_decay) if args.model_ema_decay else None
    lr = args.lr * args.batch_size / 512.0  # world size 1
    optimizer = create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=args.weight_decay,
                                    eps=args.opt_eps)
    decayed, not_decayed = count_decay_split(optimizer)
    # timm 0.3.2's create_scheduler(args) for --sched cosine, built directly
    scheduler = CosineLRScheduler(optimizer, t_initial=args.epochs, lr_min=args.min_lr,
                                  cycle_mul=1.0, cycle_decay=0.1, cycle_limit=1,
                                  warmup_t=args.warmup_epochs, warmup_lr_init=args.warmup_lr,
                                  t_in_epochs=True)
    criterion = SoftTargetCrossEntropy()
    print(f'reference: {args.model} {json.loads(args.model_kwargs)}, {n_params} parameters '
          f'({decayed} decayed, {not_decayed} not), {num_classes} classes, '
          f'{len(train_loader)} steps x {args.batch_size}, peak lr {lr:.3e}, torch '
          f'{torch.__version__}, {torch.get_num_threads()} threads', flush=True)
    log, start = [], time.time()
    for epoch in range(args.epochs):
        train_loader.sampler.set_epoch(epoch)
        epoch_lr = optimizer.param_groups[0]['lr']
        loss = train_one_epoch(model, criterion, train_loader, optimizer, model_ema, mixup_fn)
        scheduler.step(epoch)
        record = dict(epoch=epoch + 1, lr=epoch_lr, train_loss=loss)
        summary = f"epoch {epoch + 1}/{args.epochs}  lr {epoch_lr:.3e}  loss {loss:.4f}"
        if (epoch + 1) % args.eval_interval == 0 or epoch + 1 == args.epochs:
            record['val'] = evaluate(model, val_loader)
            summary += f"  val top-1 {record['val']['top1']:.2f}  top-5 {record['val']['top5']:.2f}"
            if model_ema is not None:
                record['ema_val'] = evaluate(model_ema.ema, val_loader)
                summary += f"  (EMA top-1 {record['ema_val']['top1']:.2f})"
        log.append(record)
        print(summary, flush=True)
    result = dict(final=log[-1]['val'], ema_final=log[-1].get('ema_val'), epochs=log,
                  n_params=n_params, decayed_params=decayed, seconds=time.time() - start,
                  torch=torch.__version__, argv=sys.argv[1:])
    with open(args.output, 'w') as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
