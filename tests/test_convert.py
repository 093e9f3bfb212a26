"""Weights from every source: the official .pth (read without torch, by a restricted unpickler that
refuses anything but tensors), timm's .safetensors and .pth, MindCV's .ckpt; the report of
missing / unexpected / mismatched keys; the classifier re-initialised for another num_classes;
the command line."""
import json
import os
import pickle
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import save_file

from mindcoat import create_model
from mindcoat.convert import convert_checkpoint
from mindcoat.errors import CheckpointError
from mindcoat.weights import load_weights
from weight_files import Namespace, mindcv_style, official_style, state_dict, write_torch_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINDCV_NAMES = os.path.join(os.path.dirname(__file__), 'fixtures', 'mindcv_coat_names.json')


def randomised(model, seed):
    """The model with every parameter redrawn, so that a load is visible in the values."""
    rng = np.random.default_rng(seed)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(rng.standard_normal(p.shape).astype(np.float32)))
    return model


@pytest.fixture(scope='module')
def sources():
    """Reference weights of coat_tiny (parallel blocks) and coat_lite_tiny, and their EMA."""
    return {name: (state_dict(randomised(create_model(name), 1)),
                   randomised(create_model(name), 2)) for name in ('coat_lite_tiny', 'coat_tiny')}


def holding(model, weights):
    """The model with the given {name: array} weights set."""
    for p in model.get_parameters():
        p.set_data(ms.Tensor(weights[p.name]))
    return model


def assert_holds(model, weights):
    got = state_dict(model)
    for key, value in weights.items():
        assert np.array_equal(got[key], value), key


def quiet(*_):
    pass


@pytest.mark.parametrize('name', ['coat_lite_tiny', 'coat_tiny'])
def test_official_pth_with_ema_optimizer_and_args(name, sources, tmp_path):
    """The official training checkpoint: {'model', 'model_ema', 'optimizer', 'lr_scheduler',
    'epoch', 'args' (an argparse.Namespace)}, every shared module under each of its paths, and the
    unused final norms."""
    weights, ema_model = sources[name]
    source = holding(create_model(name), weights)
    path = tmp_path / f'{name}.pth'
    write_torch_zip(path, {
        'model': official_style(source), 'model_ema': official_style(ema_model),
        'optimizer': {'state': {'0': {'step': 3, 'exp_avg': np.ones(4, np.float32)}}},
        'lr_scheduler': {'base_lrs': 5e-4}, 'epoch': 299,
        'args': Namespace(model=name, lr=5e-4, model_ema=True)})

    model = randomised(create_model(name), 3)
    report = load_weights(model, path, log=quiet)
    assert_holds(model, weights)
    assert not report.missing and not report.unexpected and not report.alias_conflicts
    unused = {'norm1.weight', 'norm1.bias'} | (
        {'norm2.weight', 'norm3.bias'} if name.startswith('coat_lite') else set())
    assert unused <= set(report.ignored)

    report = load_weights(model, path, use_ema=True, log=quiet)
    assert_holds(model, state_dict(ema_model))
    assert report.source.endswith('(EMA)')


def test_a_shared_module_whose_copies_differ_is_reported(sources, tmp_path):
    weights, _ = sources['coat_tiny']
    source = holding(create_model('coat_tiny'), weights)
    sd = official_style(source)
    sd['serial_blocks2.1.cpe.proj.bias'] = sd['serial_blocks2.1.cpe.proj.bias'] + 1.0
    write_torch_zip(tmp_path / 'edited.pth', {'model': sd})
    model = create_model('coat_tiny')
    lines = []
    report = load_weights(model, tmp_path / 'edited.pth', log=lines.append)
    assert report.alias_conflicts == ['serial_blocks2.1.cpe.proj.bias']
    assert any('differ' in line for line in lines)
    assert np.array_equal(state_dict(model)['cpe2.proj.bias'], weights['cpe2.proj.bias'])


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
def test_timm_files(fmt, sources, tmp_path):
    """timm's hub files: flat state dicts (safetensors keeps one name per shared tensor)."""
    weights, _ = sources['coat_tiny']
    path = tmp_path / f'timm.{fmt}'
    if fmt == 'safetensors':
        save_file(weights, str(path), metadata={'format': 'pt'})
    else:
        source = holding(create_model('coat_tiny'), weights)
        sd = {k: v for k, v in official_style(source).items() if not k.startswith('norm1')}
        write_torch_zip(path, sd)
    model = create_model('coat_tiny')
    report = load_weights(model, path, log=quiet)
    assert_holds(model, weights)
    assert not report.missing and not report.unexpected


@pytest.mark.parametrize('name', ['coat_lite_tiny', 'coat_tiny'])
def test_mindcv_ckpt_is_fused_and_renamed(name, sources, tmp_path):
    weights, _ = sources[name]
    source = holding(create_model(name), weights)
    mindcv = mindcv_style(source)
    # the layout this test writes is MindCV 0.3.0's own (names and shapes read off its models)
    with open(MINDCV_NAMES) as f:
        real = {n: tuple(s) for n, s in json.load(f)[name]}
    assert {k: tuple(v.shape) for k, v in mindcv.items()} == real
    path = str(tmp_path / 'mindcv.ckpt')
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in mindcv.items()], path)

    model = randomised(create_model(name), 4)
    report = load_weights(model, path, log=quiet)
    assert_holds(model, weights)
    assert not report.missing and not report.unexpected
    got = state_dict(model)
    qkv = got['serial_blocks3.1.factoratt_crpe.qkv.weight']
    parts = [mindcv[f'serial_blocks3.1.factoratt_crpe.{p}.weight'] for p in 'qkv']
    assert np.array_equal(qkv, np.concatenate(parts))  # fused in q, k, v order
    assert np.array_equal(got['patch_embed2.norm.weight'], mindcv['patch_embed2.norm.gamma'])


def test_mindcoat_checkpoint_and_create_model(sources, tmp_path):
    weights, _ = sources['coat_lite_tiny']
    src = tmp_path / 'timm.safetensors'
    save_file(weights, str(src))
    out = tmp_path / 'converted.ckpt'
    convert_checkpoint(str(src), 'coat_lite_tiny', str(out), log=quiet)
    model = create_model('coat_lite_tiny', checkpoint_path=str(out))
    assert_holds(model, weights)
    assert not [f for f in os.listdir(tmp_path) if 'partial' in f]
    again = create_model('coat_lite_tiny', pretrained=str(src))
    assert_holds(again, weights)
    with pytest.raises(ValueError, match='checkpoint_path'):
        create_model('coat_lite_tiny', pretrained=True, checkpoint_path=str(out))


def test_other_num_classes_reinitialises_the_head(sources, tmp_path):
    weights, _ = sources['coat_tiny']
    path = tmp_path / 'w.safetensors'
    save_file(weights, str(path))
    model = create_model('coat_tiny', num_classes=10)
    fresh_head = model.head.weight.asnumpy().copy()
    lines = []
    report = load_weights(model, path, log=lines.append)
    assert 'head.weight' in report.head_reinitialised and '(1000, 152)' in report.head_reinitialised
    assert any(line.startswith('classifier re-initialised') for line in lines)
    assert np.array_equal(model.head.weight.asnumpy(), fresh_head)
    assert_holds(model, {k: v for k, v in weights.items() if not k.startswith('head.')})
    assert not report.missing


def test_missing_and_unexpected_keys_need_non_strict(sources, tmp_path):
    """strict (the default) refuses a file with keys the model lacks, assigning nothing;
    strict=False loads the rest and lists what was missing and unexpected."""
    weights, _ = sources['coat_lite_tiny']
    partial = {k: v for k, v in weights.items() if not k.startswith('serial_blocks4.1.mlp')}
    partial['decoder.extra.weight'] = np.ones((3, 3), np.float32)
    path = tmp_path / 'partial.safetensors'
    save_file(partial, str(path))
    model = create_model('coat_lite_tiny')
    before = state_dict(model)
    with pytest.raises(CheckpointError, match=r'1 keys coat_lite_tiny does not have '
                                              r'\(decoder.extra.weight\).*--non_strict'):
        load_weights(model, path, log=quiet)
    assert all(np.array_equal(v, state_dict(model)[k]) for k, v in before.items())
    lines = []
    report = load_weights(model, path, strict=False, log=lines.append)
    assert sorted(report.missing) == sorted(k for k in weights
                                            if k.startswith('serial_blocks4.1.mlp'))
    assert report.unexpected == ['decoder.extra.weight']
    assert any(line.startswith('missing from the checkpoint (4') for line in lines)
    assert any('decoder.extra.weight' in line for line in lines)


def test_another_variant_is_refused_and_nothing_loads(sources, tmp_path):
    weights, _ = sources['coat_lite_tiny']
    path = tmp_path / 'lite_tiny.safetensors'
    save_file(weights, str(path))
    model = create_model('coat_lite_mini')
    before = state_dict(model)
    with pytest.raises(CheckpointError,
                       match=r'holds coat_lite_tiny weights .*, not coat_lite_mini'):
        load_weights(model, path, log=quiet)
    after = state_dict(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing half-loaded


def test_features_only_takes_the_classifier_weights(sources, tmp_path):
    weights, _ = sources['coat_tiny']
    path = tmp_path / 'w.safetensors'
    save_file(weights, str(path))
    backbone = create_model('coat_tiny', features_only=True)
    report = load_weights(backbone, path, log=quiet)
    assert not report.missing and not report.unexpected
    assert {'head.weight', 'aggregate.weight', 'norm4.weight'} <= set(report.ignored)


class _Boom:
    """Unpickling this runs os.system: what a malicious checkpoint does."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalCall:
    """Unpickling this runs eval."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize('payload', ['in-model', 'top-level', 'builtins-eval'])
def test_crafted_pickle_is_refused_and_never_runs(payload, tmp_path):
    marker = tmp_path / 'pwned'
    if payload == 'builtins-eval':
        data = pickle.dumps({'model': _EvalCall(f'open({str(marker)!r}, "w")')}, protocol=2)
    else:
        boom = _Boom(f'touch {marker}')
        obj = {'model': {'head.weight': boom}} if payload == 'in-model' else boom
        data = pickle.dumps(obj, protocol=2)
    path = tmp_path / 'evil.pth'
    write_torch_zip(path, None, data=data)
    with pytest.raises(CheckpointError, match='refusing to load'):
        load_weights(create_model('coat_lite_tiny'), path, log=quiet)
    assert not marker.exists()
    # a raw (pre-zip) pickle is refused before it is opened
    raw = tmp_path / 'legacy.pth'
    raw.write_bytes(data)
    with pytest.raises(CheckpointError, match='legacy'):
        load_weights(create_model('coat_lite_tiny'), raw, log=quiet)
    assert not marker.exists()


def _convert_cli(*args, cwd):
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'mindcoat.convert', *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_command_line(sources, tmp_path):
    weights, ema_model = sources['coat_lite_tiny']
    source = holding(create_model('coat_lite_tiny'), weights)
    src = tmp_path / 'official.pth'
    write_torch_zip(src, {'model': official_style(source), 'model_ema': official_style(ema_model)})
    out = tmp_path / 'out.ckpt'
    res = _convert_cli(src, '-m', 'coat_lite_tiny', '-o', out, '--ema', cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    n = len(list(source.get_parameters()))
    assert f'loaded {n}/{n} parameters' in res.stdout and f'wrote {out}' in res.stdout
    saved = ms.load_checkpoint(str(out))
    assert np.array_equal(saved['cpe3.proj.weight'].asnumpy(),
                          state_dict(ema_model)['cpe3.proj.weight'])

    evil = tmp_path / 'evil.pth'
    write_torch_zip(evil, None, data=pickle.dumps(_Boom(f'touch {tmp_path / "pwned"}'), protocol=2))
    for args, words in (((evil, '-m', 'coat_lite_tiny', '-o', tmp_path / 'x.ckpt'), 'refusing'),
                        ((tmp_path / 'nope.pth', '-m', 'coat_lite_tiny', '-o', out), 'not found'),
                        ((src, '-m', 'coat_tiny', '-o', tmp_path / 'y.ckpt'),
                         'holds coat_lite_tiny'),
                        ((src, '-m', 'coat_large', '-o', out), 'unknown model')):
        res = _convert_cli(*args, cwd=tmp_path)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and 'Traceback' not in res.stderr, res.stderr
    assert not (tmp_path / 'pwned').exists()
    assert not (tmp_path / 'x.ckpt').exists() and not (tmp_path / 'y.ckpt').exists()


def test_not_a_weight_file(tmp_path):
    junk = tmp_path / 'notes.ckpt'
    junk.write_text('hello')
    with pytest.raises(CheckpointError, match='not a readable MindSpore checkpoint'):
        load_weights(create_model('coat_lite_tiny'), junk, log=quiet)
    archive = tmp_path / 'photos.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        z.writestr('a.txt', 'x')
    with pytest.raises(CheckpointError, match='not a torch.save archive'):
        load_weights(create_model('coat_lite_tiny'), archive, log=quiet)
