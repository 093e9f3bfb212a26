"""Dev-only: writes tests/fixtures/lr/official_recipes.json, the official CoaT training recipes
as the official code resolves them, and the learning rate of every epoch they train at.

For each variant the official command line (scripts/train.sh, or the README's training command
for coat_small, coat_lite_medium and the 384 fine-tune) is parsed by the official parser
(src/args.py of mlpc-ucsd/CoaT); then, as src/main.py does on 8 GPUs (nproc_per_node=8 in the
scripts), the lr is scaled by batch_size * world_size / 512, timm 0.3.2's create_scheduler builds
the CosineLRScheduler, and the loop records the optimizer's lr during each epoch and calls
``lr_scheduler.step(epoch)`` after it.

timm 0.3.2 is the version the official code pins. Its scheduler is run from the release wheel
itself (pure Python; only timm/scheduler is imported, so the rest of that old timm, which does
not import under current torch, is never loaded):

    /tmp/torch/bin/pip download --no-deps timm==0.3.2 -d /tmp/timm032
    /tmp/torch/bin/python tools/make_lr_fixtures.py \
        --timm_wheel /tmp/timm032/timm-0.3.2-py3-none-any.whl \
        --coat /path/to/CoaT        # a checkout, or a bare git directory of mlpc-ucsd/CoaT

(Checked once: timm 1.0.31's CosineLRScheduler, built with 0.3.2's factory arguments
(cycle_decay = decay_rate 0.1, cycle_limit 1), gives the same values bit for bit; this script
does not rely on that.)
"""
import argparse
import json
import os
import subprocess
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'tests', 'fixtures', 'lr', 'official_recipes.json')
WORLD_SIZE = 8  # scripts/train.sh and scripts/train_extra_args.sh: --nproc_per_node=8

# the official training commands (scripts/train.sh passes --batch-size 256; README "Train")
COMMANDS = {
    'coat_lite_tiny': '--model coat_lite_tiny --batch-size 256',
    'coat_lite_mini': '--model coat_lite_mini --batch-size 256',
    'coat_lite_small': '--model coat_lite_small --batch-size 256',
    'coat_tiny': '--model coat_tiny --batch-size 256',
    'coat_mini': '--model coat_mini --batch-size 256',
    'coat_small': '--model coat_small --batch-size 128 --drop-path 0.2 --no-model-ema '
                  '--warmup-epochs 20 --clip-grad 5.0',
    'coat_lite_medium': '--model coat_lite_medium --batch-size 128 --drop-path 0.3 '
                        '--no-model-ema --warmup-epochs 20 --clip-grad 5.0',
    'coat_lite_medium_384': '--model coat_lite_medium --resume_only_state --batch-size 32 '
                            '--drop-path 0.2 --no-model-ema --warmup-epochs 0 --clip-grad 5.0 '
                            '--input-size 384 --lr 5e-6 --min-lr 5e-6 --weight-decay 1e-8 '
                            '--epochs 6 --save_freq 1',
}


def read_official(coat, path):
    """A file of the official repository: from a checkout, or from a bare git directory."""
    if os.path.isfile(os.path.join(coat, path)):
        with open(os.path.join(coat, path)) as f:
            return f.read()
    return subprocess.run(['git', '-C', coat, 'show', f'HEAD:{path}'], check=True,
                          capture_output=True, text=True).stdout


def official_parser(coat):
    namespace = {}
    exec(compile(read_official(coat, 'src/args.py'), 'src/args.py', 'exec'), namespace)
    return argparse.ArgumentParser(parents=[namespace['get_args_parser']()])


def timm032_scheduler_factory(wheel):
    """timm 0.3.2's create_scheduler, imported from the wheel without timm/__init__.py."""
    sys.path.insert(0, wheel)
    package = types.ModuleType('timm')
    package.__path__ = [os.path.join(wheel, 'timm')]
    sys.modules['timm'] = package
    from timm.scheduler.scheduler_factory import create_scheduler
    import timm.scheduler.cosine_lr as cosine_lr
    where = os.path.abspath(cosine_lr.__file__)
    assert where.startswith(os.path.abspath(wheel)), where
    return create_scheduler


def lr_per_epoch(args, create_scheduler, world_size):
    """src/main.py: scale, build the scheduler, record each epoch's lr, step after the epoch."""
    args.lr = args.lr * args.batch_size * world_size / 512.0
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr,
                                  eps=args.opt_eps, weight_decay=args.weight_decay)
    lr_scheduler, _ = create_scheduler(args, optimizer)
    lrs = []
    for epoch in range(args.start_epoch, args.epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        lr_scheduler.step(epoch)
    return lrs


def main():
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument('--timm_wheel', required=True, help='timm-0.3.2-py3-none-any.whl')
    cli.add_argument('--coat', required=True, help='mlpc-ucsd/CoaT: checkout or bare git dir')
    opts = cli.parse_args()
    create_scheduler = timm032_scheduler_factory(opts.timm_wheel)
    parser = official_parser(opts.coat)
    out = {'world_size': WORLD_SIZE, 'recipes': {}}
    for name, command in COMMANDS.items():
        args = parser.parse_args(command.split())
        official = {k: v for k, v in sorted(vars(args).items())
                    if isinstance(v, (int, float, str, bool, list, type(None)))}
        lrs = lr_per_epoch(args, create_scheduler, WORLD_SIZE)
        out['recipes'][name] = {'command': command, 'args': official, 'scaled_lr': args.lr,
                                'lr_per_epoch': lrs}
        print(f'{name}: scaled lr {args.lr:.4g}, epochs 0-5: {[f"{v:.4g}" for v in lrs[:6]]}')
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, 'w') as f:
        json.dump(out, f, indent=1)
        f.write('\n')
    print('wrote', os.path.normpath(OUT), os.path.getsize(OUT), 'bytes')


if __name__ == '__main__':
    main()
