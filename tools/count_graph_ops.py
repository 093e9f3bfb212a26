"""Dev-only: how many primitive ops the compiled graphs hold, mindcoat vs MindCV 0.3.0, as a proxy
for how long Ascend takes to compile them (Ascend cannot be timed here; the CPU can save the IR).

    python tools/count_graph_ops.py                                   # mindcoat only
    python tools/count_graph_ops.py --mindcv_python /tmp/mindcv/bin/python --mindcv_src DIR

(DIR: MindCV at v0.3.0, e.g. `git -C MINDCV_GIT archive v0.3.0 | tar -x -C DIR`; its config.py
and configs/coat/*.yaml are read, the mindcv package comes from --mindcv_python's venv.)

Every graph is compiled once, in its own process, on the CPU with MindSpore's IR saving on
(MS_DEV_SAVE_GRAPHS=1, only the stages counted: MS_DEV_DUMP_IR_PASSES). mindcoat's graphs are the
native ones Ascend runs (MINDCOAT_NATIVE=1: no CPU Custom kernels; checked in the IR). Both sides
are built the way their train.py builds them, from their own Ascend YAML (amp level, loss
scaling, EMA, optimizer), on one device (the 8-device runs add the same gradient all-reduce to
both). Training: the train step; inference: the network as evaluated (amp applied), eval mode.

Counted per graph, by op type, in three saved stages:
  before  05_inline: parsed, typed and inlined, before the optimizer passes (autodiff not yet
          expanded: the backward is one J node per grad call)
  final   21_validate: the frontend's output after all its passes, the graph every backend
          receives
  kernel  graph_build_*: the CPU backend's kernel graph(s) (Ascend's backend passes differ)
'compute' leaves out the bookkeeping primitives (Return, Load, UpdateState, Depend, tuples,
control flow, J, environ); 'all' counts every CNode whose operator is a primitive. The count must
not depend on the batch size: each graph is compiled at every --batch_sizes and the tool fails if
the counts differ. Compile time is the wall time of Cell.compile (frontend + CPU backend) in that
process, with IR saving on: noisy on a shared machine.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ('coat_lite_tiny', 'coat_tiny')
MODES = ('train', 'infer')
STAGES = {'before': r'^\d+_inline_\d+\.ir$', 'final': r'^\d+_validate_\d+\.ir$',
          'kernel': r'^graph_build_\d+_\d+\.ir$'}
DUMP_PASSES = '_inline,_validate,graph_build'
BOOKKEEPING = frozenset((
    'Return', 'Load', 'UpdateState', 'Depend', 'MakeTuple', 'TupleGetItem', 'MakeList',
    'ListGetItem', 'MakeDict', 'DictGetItem', 'Switch', 'SwitchLayer', 'Partial', 'J',
    'EnvironCreate', 'EnvironGet', 'EnvironSet', 'EnvironAdd', 'RefToEmbed', 'StopGradient'))
# A CNode line in a saved .ir body: "  %3(name) = PrimFunc_MatMul(...)" or "  Return(%2)". A call
# of a subgraph ("call @g(...)") or of a value ("%4(...)") is not a primitive and does not match.
NODE = re.compile(r'^  (?:%\d+\([^)]*\) = )?([A-Za-z_][\w.\-]*)\(')
PREFIXES = ('PrimFunc_', 'S_Prim_', 'S-Prim-')


class Failure(Exception):
    """One line for the user."""


def op_type(raw):
    for prefix in PREFIXES:
        if raw.startswith(prefix):
            return raw[len(prefix):]
    return raw


def count_ops(path):
    """Counter {op type: CNodes} of the primitive CNodes in one saved .ir file (every subgraph)."""
    counts = collections.Counter()
    with open(path, encoding='utf-8', errors='replace') as f:
        for line in f:
            match = NODE.match(line)
            if match:
                counts[op_type(match.group(1))] += 1
    return counts


def totals(counts):
    return {'all': sum(counts.values()),
            'compute': sum(n for op, n in counts.items() if op not in BOOKKEEPING)}


def stage_counts(ir_dir, required=tuple(STAGES)):
    """{stage: Counter} summed over each stage's files in ``ir_dir`` (the stages saved); fails if
    one of ``required`` is missing."""
    names = sorted(os.listdir(ir_dir)) if os.path.isdir(ir_dir) else []
    result = {}
    for stage, pattern in STAGES.items():
        files = [n for n in names if re.match(pattern, n)]
        if files:
            result[stage] = sum((count_ops(os.path.join(ir_dir, n)) for n in files),
                                collections.Counter())
        elif stage in required:
            raise Failure(f'no {stage} IR ({pattern}) in {ir_dir}: did MindSpore save the graphs?')
    return result


# ---- child side: build one graph and compile it (runs under the side's interpreter) ----------

def _images(batch, size):
    import numpy as np
    import mindspore as ms
    return ms.Tensor(np.zeros((batch, 3, size, size), np.float32))


def _soft_targets(batch, num_classes):
    import numpy as np
    import mindspore as ms
    return ms.Tensor(np.full((batch, num_classes), 1.0 / num_classes, np.float32))


def build_mindcoat(model_name, mode, batch, amp_level):
    """(cell, inputs): train.py's step or evaluated network, from configs/coat/<model>_ascend."""
    import mindspore as ms
    from mindcoat import create_model
    from mindcoat.config import parse_config
    from mindcoat.engine import build_seeded, create_train_step
    cfg = parse_config(['-c', os.path.join(REPO, 'configs', 'coat', f'{model_name}_ascend.yaml')])
    amp = amp_level or cfg.amp_level
    model = build_seeded(lambda: create_model(
        cfg.model, num_classes=cfg.num_classes, in_channels=cfg.in_channels,
        drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, **(cfg.model_kwargs or {})),
        cfg.seed)
    images = _images(batch, cfg.image_resize)
    if mode == 'infer':
        network = model if amp == 'O0' else ms.amp.auto_mixed_precision(model, amp)
        network.set_train(False)
        return network, (images,)
    _, step, _, _, _ = create_train_step(model, cfg, amp, distributed=False, lr_schedule=[1e-3])
    step.set_train(True)
    return step, (images, _soft_targets(batch, cfg.num_classes))


def _mindcv_args(model_name, src):
    sys.path.insert(0, src)
    from config import parse_args  # MindCV's own config.py (v0.3.0)
    yaml_path = os.path.join(src, 'configs', 'coat', f'{model_name}_ascend.yaml')
    return parse_args(['-c', yaml_path, '--distribute', 'False'])


def _mindcv_train_cell(network, loss, optimizer, args):
    """MindCV 0.3.0's train step as its create_trainer builds it (mindcv/utils/trainer_factory.py).
    Its customized branch refuses a loss-scale update cell on the CPU, so that branch is rebuilt
    here from the same pieces; the plain branch is MindSpore's Model, as MindCV calls it."""
    import mindspore as ms
    from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager
    from mindcv.utils import create_trainer, get_metrics, require_customized_train_step
    from mindcv.utils.amp import auto_mixed_precision
    from mindcv.utils.train_step import TrainStep
    from mindcv.utils.trainer_factory import add_loss_network
    if not require_customized_train_step(args.ema, args.clip_grad, args.gradient_accumulation_steps,
                                         args.amp_cast_list):
        model = create_trainer(network, loss, optimizer, get_metrics(args.num_classes),
                               amp_level=args.amp_level, amp_cast_list=args.amp_cast_list,
                               loss_scale_type=args.loss_scale_type, loss_scale=args.loss_scale,
                               drop_overflow_update=args.drop_overflow_update)
        return model._train_network
    auto_mixed_precision(network, args.amp_level, args.amp_cast_list)
    kind = args.loss_scale_type.lower()
    if kind == 'fixed':
        manager = FixedLossScaleManager(loss_scale=args.loss_scale,
                                        drop_overflow_update=args.drop_overflow_update)
    elif kind == 'dynamic':
        manager = DynamicLossScaleManager(init_loss_scale=args.loss_scale, scale_factor=2,
                                          scale_window=2000)
    else:
        raise Failure(f'MindCV loss_scale_type {args.loss_scale_type}: not what its trainer takes')
    update_cell = manager.get_update_cell()
    scale_sense = ms.Tensor(args.loss_scale, ms.float32) if update_cell is None else update_cell
    step = TrainStep(network=add_loss_network(network, loss, args.amp_level), optimizer=optimizer,
                     ema=args.ema, ema_decay=args.ema_decay, clip_grad=args.clip_grad,
                     clip_value=args.clip_value,
                     gradient_accumulation_steps=args.gradient_accumulation_steps,
                     scale_sense=scale_sense)
    return step


def build_mindcv(model_name, mode, batch, amp_level, src):
    """(cell, inputs): MindCV 0.3.0's train step or evaluated network, as its train.py builds
    them from its configs/coat/<model>_ascend.yaml (ImageNet on 8 devices for the lr table)."""
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler
    from mindcv.utils import require_customized_train_step
    from mindcv.utils.amp import auto_mixed_precision
    args = _mindcv_args(model_name, src)
    if amp_level:
        args.amp_level = amp_level
    num_classes = args.num_classes
    network = create_model(model_name=args.model, num_classes=num_classes,
                           in_channels=args.in_channels, drop_rate=args.drop_rate,
                           drop_path_rate=args.drop_path_rate, pretrained=False,
                           checkpoint_path='', ema=args.ema)
    images = _images(batch, args.image_resize)
    if mode == 'infer':
        auto_mixed_precision(network, args.amp_level, args.amp_cast_list)
        network.set_train(False)
        return network, (images,)
    loss = create_loss(name=args.loss, reduction=args.reduction,
                       label_smoothing=args.label_smoothing, aux_factor=args.aux_factor)
    num_batches = 1281167 // (args.batch_size * 8)
    lr_scheduler = create_scheduler(
        num_batches, scheduler=args.scheduler, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, warmup_factor=args.warmup_factor,
        decay_epochs=args.decay_epochs, decay_rate=args.decay_rate,
        milestones=args.multi_step_decay_milestones, num_epochs=args.epoch_size,
        num_cycles=args.num_cycles, cycle_decay=args.cycle_decay,
        lr_epoch_stair=args.lr_epoch_stair)
    plain = not require_customized_train_step(args.ema, args.clip_grad,
                                              args.gradient_accumulation_steps, args.amp_cast_list)
    optimizer_loss_scale = args.loss_scale if (
        args.loss_scale_type == 'fixed' and args.drop_overflow_update is False and plain) else 1.0
    optimizer = create_optimizer(
        network, opt=args.opt, lr=lr_scheduler, weight_decay=args.weight_decay,
        momentum=args.momentum, nesterov=args.use_nesterov,
        weight_decay_filter=args.weight_decay_filter, layer_decay=args.layer_decay,
        loss_scale=optimizer_loss_scale, checkpoint_path='', eps=args.eps)
    step = _mindcv_train_cell(network, loss, optimizer, args)
    step.set_train(True)
    return step, (images, _soft_targets(batch, num_classes))


def child(args):
    """Compile one graph; print {"compile_s": seconds} as the last line."""
    import mindspore as ms
    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={'jit_level': 'O0'})
    if args.side == 'mindcoat':
        cell, inputs = build_mindcoat(args.model, args.mode, args.batch, args.amp_level)
    else:
        cell, inputs = build_mindcv(args.model, args.mode, args.batch, args.amp_level,
                                    args.mindcv_src)
    start = time.perf_counter()
    try:
        cell.compile(*inputs)
    except RuntimeError as e:  # the CPU backend can fail after the frontend saved its graph
        # the message's first line under its '- Kernel select failed:'-style header
        lines = [line for line in str(e).splitlines() if line.strip() and not line.startswith('-')]
        print(json.dumps({'compile_s': None, 'error': lines[0] if lines else repr(e)}))
        return
    print(json.dumps({'compile_s': time.perf_counter() - start}))


# ---- parent side: one process per graph, then count -----------------------------------------

def run_graph(side, model, mode, batch, opts):
    """{'compile_s', 'stages': {stage: Counter}} of one graph compiled in a fresh process."""
    python = sys.executable if side == 'mindcoat' else opts.mindcv_python
    work = tempfile.mkdtemp(prefix=f'graph_ops_{side}_{model}_{mode}_{batch}_', dir=opts.work)
    ir_dir = os.path.join(work, 'ir')
    env = dict(os.environ, MS_DEV_SAVE_GRAPHS='1', MS_DEV_SAVE_GRAPHS_PATH=ir_dir,
               MS_DEV_DUMP_IR_PASSES=DUMP_PASSES, GLOG_v='3')
    if side == 'mindcoat':
        env.update(MINDCOAT_NATIVE='1', PYTHONPATH=os.pathsep.join(
            p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
    cmd = [python, os.path.abspath(__file__), '--_child', '--side', side, '--model', model,
           '--mode', mode, '--batch', str(batch)]
    if opts.amp_level:
        cmd += ['--amp_level', opts.amp_level]
    if side == 'mindcv':
        cmd += ['--mindcv_src', os.path.abspath(opts.mindcv_src)]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ['(no output)'])[-1]
        raise Failure(f'{side} {model} {mode} batch {batch} failed to compile: {tail} '
                      f'(full output: rerun {" ".join(cmd)} in {work})')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # a graph the CPU backend rejects (MindCV's Ascend-only overflow check) still has its
    # frontend stages counted, without a kernel graph or a compile time
    result['stages'] = stage_counts(ir_dir, ('before', 'final') if result.get('error')
                                    else tuple(STAGES))
    if side == 'mindcoat' and result['stages']['final']['Custom']:
        raise Failure(f'mindcoat {model} {mode}: Custom ops in the graph although '
                      'MINDCOAT_NATIVE=1 (not the native graph Ascend runs)')
    return result


def measure(side, model, mode, opts, log):
    """One graph at every batch size: its counts (checked equal) and each compile time."""
    runs = {}
    for batch in opts.batch_sizes:
        runs[batch] = run_graph(side, model, mode, batch, opts)
        final = totals(runs[batch]['stages']['final'])
        secs = runs[batch]['compile_s']
        compiled = (f'compile {secs:.1f} s' if secs is not None else
                    f'CPU backend failed: {runs[batch]["error"]}')
        log(f'{side:8} {model:15} {mode:5} batch {batch}: {final["compute"]} compute ops '
            f'({final["all"]} primitive CNodes), {compiled}', flush=True)
    first = runs[opts.batch_sizes[0]]['stages']
    for batch, run in runs.items():
        if run['stages'] != first:
            diff = {s: dict((run['stages'].get(s, collections.Counter()) - first.get(
                s, collections.Counter())) + (first.get(s, collections.Counter()) - run[
                    'stages'].get(s, collections.Counter()))) for s in STAGES}
            raise Failure(f'{side} {model} {mode}: op counts differ between batch '
                          f'{opts.batch_sizes[0]} and {batch}: {diff}')
    errors = sorted({r['error'] for r in runs.values() if r.get('error')})
    return {'stages': {s: {'totals': totals(c), 'by_type': dict(c.most_common())}
                       for s, c in first.items()},
            'compile_s': {str(b): None if r['compile_s'] is None else round(r['compile_s'], 2)
                          for b, r in runs.items()},
            'cpu_backend_error': errors[0] if errors else None}


def report(results, opts):
    """Markdown: the summary table, then the top op types per graph."""
    lines = ['| model | graph | side | ops before opt. | ops final (compute / all) | '
             'CPU kernel graph | CPU compile s |', '|---|---|---|---:|---:|---:|---:|']
    for model in opts.models:
        for mode in opts.modes:
            for side in opts.sides:
                r = results[side][model][mode]
                t = {s: r['stages'][s]['totals'] for s in r['stages']}
                kernel = t['kernel']['compute'] if 'kernel' in t else 'n/a'
                secs = ' / '.join('fails' if v is None else f'{v:.0f}'
                                  for v in r['compile_s'].values())
                lines.append(f"| {model} | {'training' if mode == 'train' else 'inference'} | "
                             f"{side} | {t['before']['compute']} | {t['final']['compute']} / "
                             f"{t['final']['all']} | {kernel} | {secs} |")
    lines.append('')
    for model in opts.models:
        for mode in opts.modes:
            lines.append(f'Top {opts.top} op types, final graph, {model} {mode}:')
            for side in opts.sides:
                by_type = results[side][model][mode]['stages']['final']['by_type']
                top = [(op, n) for op, n in by_type.items() if op not in BOOKKEEPING][:opts.top]
                lines.append(f'  {side}: ' + ', '.join(f'{op} {n}' for op, n in top))
    for side in opts.sides:
        for model in opts.models:
            for mode in opts.modes:
                error = results[side][model][mode]['cpu_backend_error']
                if error:
                    lines.append(f'{side} {model} {mode}: the CPU backend cannot compile it '
                                 f'({error}); its frontend graph is counted')
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', default=','.join(MODELS), help='comma-separated, default %(default)s')
    p.add_argument('--modes', default=','.join(MODES), help='train, infer (default both)')
    p.add_argument('--batch_sizes', default='2,4',
                   help='each graph is compiled at each; the counts must agree (default %(default)s)')
    p.add_argument('--amp_level', choices=('O0', 'O1', 'O2', 'O3'),
                   help="override both configs' amp_level (default: each config's own, O2)")
    p.add_argument('--mindcv_python', help='interpreter with mindcv 0.3.0: adds the MindCV side')
    p.add_argument('--mindcv_src', help='MindCV source tree at v0.3.0 (config.py, configs/)')
    p.add_argument('--top', type=int, default=15, help='op types listed per graph')
    p.add_argument('--json', help='also write every count (all stages, all op types) here')
    p.add_argument('--work', help='folder for the saved IR (default: a new temporary folder)')
    p.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--side', choices=('mindcoat', 'mindcv'), help=argparse.SUPPRESS)
    p.add_argument('--model', help=argparse.SUPPRESS)
    p.add_argument('--mode', choices=MODES, help=argparse.SUPPRESS)
    p.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_options(opts):
    opts.models = [m for m in opts.models.split(',') if m]
    opts.modes = [m for m in opts.modes.split(',') if m]
    for mode in opts.modes:
        if mode not in MODES:
            raise Failure(f"--modes: unknown mode '{mode}'; choose from {', '.join(MODES)}")
    for model in opts.models:
        if not os.path.isfile(os.path.join(REPO, 'configs', 'coat', f'{model}_ascend.yaml')):
            raise Failure(f"--models: no configs/coat/{model}_ascend.yaml in {REPO}")
    try:
        opts.batch_sizes = [int(b) for b in opts.batch_sizes.split(',') if b]
    except ValueError:
        raise Failure(f'--batch_sizes must be integers, got {opts.batch_sizes}') from None
    if not opts.batch_sizes or min(opts.batch_sizes) < 1:
        raise Failure('--batch_sizes needs at least one size >= 1')
    opts.sides = ['mindcoat']
    if opts.mindcv_python:
        if not opts.mindcv_src or not os.path.isfile(os.path.join(opts.mindcv_src, 'config.py')):
            raise Failure('--mindcv_python needs --mindcv_src: a MindCV v0.3.0 tree holding '
                          'config.py and configs/coat/')
        for model in opts.models:
            if not os.path.isfile(os.path.join(opts.mindcv_src, 'configs', 'coat',
                                               f'{model}_ascend.yaml')):
                raise Failure(f'MindCV has no configs/coat/{model}_ascend.yaml in '
                              f'{opts.mindcv_src}: leave {model} out of --models')
        opts.sides.append('mindcv')
    if opts.work:
        os.makedirs(opts.work, exist_ok=True)


def main(argv=None):
    opts = parse_args(argv)
    if opts._child:
        child(opts)
        return 0
    try:
        check_options(opts)
        results = {side: {model: {} for model in opts.models} for side in opts.sides}
        for model in opts.models:  # both sides of a comparison one after the other
            for mode in opts.modes:
                for side in opts.sides:
                    results[side][model][mode] = measure(side, model, mode, opts, print)
    except Failure as e:
        print(f'count_graph_ops: {e}', file=sys.stderr)
        return 1
    print()
    print(report(results, opts))
    if opts.json:
        with open(opts.json, 'w') as f:
            json.dump({'batch_sizes': opts.batch_sizes, 'amp_level': opts.amp_level or 'config',
                       'results': results}, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
