"""Hostile MindSpore checkpoints: a real ``save_checkpoint`` output edited record by record with
its CRC recomputed (tools/make_hostile_ckpts.py), some of which used to kill the process inside
mindspore.load_checkpoint, others to load zero-filled or NaN weights with exit 0. Each one now
ends in one ``error:`` line and exit 1 in convert and predict, and a CheckpointError in
create_model; mindcoat's .ckpt reader gives what MindSpore's gives on real files. Also the
classifier head loaded whole or not at all, and unknown keys reported instead of skipped."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from mindcoat import create_model
from mindcoat.engine.checkpoint import load_training_state, save_checkpoint
from mindcoat.errors import CheckpointError, ResumeError
from mindcoat.weights import load_weights, save_ckpt
from mindcoat.weights.readers import read_any, read_mindspore_ckpt
from train_helpers import REPO, load_script

TOOL = load_script('tools/make_hostile_ckpts.py')
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))
TINY_JSON = json.dumps({k: list(v) for k, v in TINY.items()})
# the three that crashed the process inside mindspore.load_checkpoint (exit 134/135/139)
CRASHED_MINDSPORE = ('content_tripled', 'float32_as_float16', 'negative_dims')
# runs each CLI's main() on many files in one interpreter, as `python -m` would (cli.run), with
# file descriptor 2 captured per file: MindSpore's C++ logging writes there too
DRIVER = r'''
import importlib, json, os, sys, tempfile
main = importlib.import_module(sys.argv[1]).main
results = {}
for name, argv in json.loads(sys.argv[2]):
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        except BaseException as exc:
            code = f'{type(exc).__name__} escaped cli.run: {exc}'
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results[name] = [code, err.read().decode('utf-8', 'replace')]
with open(sys.argv[3], 'w') as f:
    json.dump(results, f)
'''


def quiet(*_):
    pass


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The base (a tiny model's real checkpoint), every hostile case made from it, an image."""
    root = tmp_path_factory.mktemp('hostile')
    base = str(root / 'base.ckpt')
    save_ckpt(base, create_model('coat_lite_tiny', **TINY))
    out = dict(TOOL.make_all(base, str(root / 'cases')), base=base, root=str(root))
    image = root / 'image.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), np.uint8)).save(image)
    out['image'] = str(image)
    return out


def cli_env():
    # GLOG_v 2 is MindSpore's default: any warning it printed would show as a second line
    return dict(os.environ, GLOG_v='2', PYTHONPATH=REPO + os.pathsep +
                os.environ.get('PYTHONPATH', ''))


def convert_argv(src, out):
    return [src, '-m', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '-o', out]


def predict_argv(src, image):
    return ['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path', src, image]


def assert_one_error_line(code, stderr, case):
    lines = stderr.strip().splitlines()
    assert code == 1, (case, code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (case, stderr[-2000:])
    assert 'Traceback' not in stderr, (case, stderr[-2000:])


def run_driver(module, jobs, tmp_path):
    results = tmp_path / f'{module}.json'
    proc = subprocess.run([sys.executable, '-c', DRIVER, module, json.dumps(jobs),
                           str(results)], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])  # negative: a signal
    return json.loads(results.read_text())


@pytest.mark.parametrize('module', ['mindcoat.convert', 'mindcoat.predict'])
def test_every_hostile_file_is_one_line_and_exit_1(module, files, tmp_path):
    """All cases through the command's own main() in one interpreter (one MindSpore start-up)."""
    outs = {case: str(tmp_path / f'{case}.out.ckpt') for case in TOOL.CASES}
    jobs = [[case, convert_argv(files[case], outs[case]) if module == 'mindcoat.convert'
             else predict_argv(files[case], files['image'])] for case in TOOL.CASES]
    results = run_driver(module, jobs, tmp_path)
    for case, (code, stderr) in results.items():
        assert_one_error_line(code, stderr, case)
        assert not os.path.exists(outs[case]), case
    assert sorted(results) == sorted(TOOL.CASES)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.ckpt') or '.tmp' in f]


@pytest.mark.parametrize('case', CRASHED_MINDSPORE)
def test_files_that_crashed_mindspore_end_cleanly_in_real_processes(case, files, tmp_path):
    """`python -m mindcoat.convert` and `python -m mindcoat.predict` as a user runs them: exit 1
    (not a signal), one line, nothing written."""
    out = tmp_path / 'out.ckpt'
    for argv in (['-m', 'mindcoat.convert'] + convert_argv(files[case], str(out)),
                 ['-m', 'mindcoat.predict'] + predict_argv(files[case], files['image'])):
        proc = subprocess.run([sys.executable] + argv, cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode >= 0, f'killed by signal {-proc.returncode}'
        assert_one_error_line(proc.returncode, proc.stderr, case)
        assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_create_model_refuses_every_hostile_file(files):
    """In process, the message says what is wrong with which file, and 'CRC' only for a CRC
    mismatch (none of these: each one's CRC was recomputed)."""
    expected = {
        'content_tripled': 'but holds', 'float32_as_float16': 'of Float16',
        'duplicate_name': 'two records named', 'negative_dims': 'negative dimension',
        'truncated_header': 'truncated', 'short_record': 'but holds',
        'unknown_dtype': "unsupported data type 'Float8'", 'absurd_dims_overflow': 'but holds',
        'absurd_dims_1e12': '(1000000, 1000000) of Float32', 'garbage_after_records':
        'not a readable MindSpore checkpoint', 'nan_weights': 'NaN or Inf',
        'inf_weights': 'NaN or Inf', 'safetensors_huge_offsets': 'data_offsets [1000000',
        'safetensors_huge_empty_shape': 'shape [10000000000000000000, 0]'}
    assert set(expected) == set(TOOL.CASES)
    for case, words in expected.items():
        with pytest.raises(CheckpointError) as info:
            create_model('coat_lite_tiny', checkpoint_path=files[case], log=quiet, **TINY)
        message = str(info.value)
        assert message.startswith(files[case]) and words in message, (case, message)
        assert '\n' not in message and 'CRC' not in message, (case, message)


def test_short_record_used_to_load_zero_filled(files):
    """MindSpore pads a short record with zeros and loads it (exit 0); it is refused here and
    the base file it was cut from still loads, exactly."""
    with pytest.raises(CheckpointError, match='declares shape .* but holds'):
        read_any(files['short_record'])
    model = create_model('coat_lite_tiny', checkpoint_path=files['base'], log=quiet, **TINY)
    stored = read_mindspore_ckpt(files['base'])
    assert all(np.array_equal(p.asnumpy(), stored[p.name]) for p in model.get_parameters())


def test_reader_gives_what_mindspore_gives(tmp_path):
    """A real file with every kind of value save_checkpoint writes: tensors of each dtype,
    0-d tensors, appended int / float / bool / str, with and without a CRC."""
    rng = np.random.default_rng(0)
    tensors = {'f32': rng.standard_normal((3, 4, 5), np.float32),
               'f16': rng.standard_normal((7,)).astype(np.float16),
               'f64': rng.standard_normal((2, 2)), 'i8': np.arange(-5, 5, dtype=np.int8),
               'u8': np.arange(9, dtype=np.uint8).reshape(3, 3),
               'i32': np.array([[1, -2]], np.int32), 'i64': np.array([2 ** 40], np.int64),
               'flags': np.array([True, False, True]), 'scalar': np.array(2.5, np.float32),
               'empty': np.zeros((0, 3), np.float32)}
    append = {'format': 'mindcoat-train-v1', 'note': 'ünïcode ✓', 'epoch': 7,
              'best_top1': 81.25, 'done': True}
    for crc in (True, False):
        path = str(tmp_path / f'all_{crc}.ckpt')
        ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in tensors.items()],
                           path, append_dict=dict(append), crc_check=crc)
        theirs = ms.load_checkpoint(path)
        ours = read_mindspore_ckpt(path)
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            if isinstance(value, str):
                assert ours[key] == value, key
                continue
            expected = value.asnumpy()
            assert ours[key].dtype == expected.dtype and ours[key].shape == expected.shape, key
            assert np.array_equal(ours[key], expected), key
        assert ours['note'] == append['note'] and int(ours['epoch']) == 7
        params = read_mindspore_ckpt(path, numpy=False)
        assert isinstance(params['f32'], ms.Parameter) and params['format'] == append['format']


def test_a_tensor_written_in_slices_is_joined(files, tmp_path):
    """MindSpore writes a tensor above 512 MB as consecutive records of one name, each with the
    full dims; they join into one tensor (as MindSpore joins them). Slices whose dims disagree
    are refused."""
    recs = TOOL.records(open(files['base'], 'rb').read())
    name, dims, dtype, content = recs[TOOL.target(recs)]
    half = len(content) // 2
    sliced = [r for r in recs if r[0] != name] + [(name, dims, dtype, content[:half]),
                                                  (name, dims, dtype, content[half:])]
    path = tmp_path / 'sliced.ckpt'
    path.write_bytes(TOOL.with_crc(b''.join(TOOL.record(*r) for r in sliced)))
    ours = read_mindspore_ckpt(str(path))
    assert np.array_equal(ours[name], ms.load_checkpoint(str(path))[name].asnumpy())
    assert ours[name].tobytes() == content
    sliced[-1] = (name, [dims[0] + 1] + dims[1:], dtype, content[half:])
    path.write_bytes(TOOL.with_crc(b''.join(TOOL.record(*r) for r in sliced)))
    with pytest.raises(CheckpointError, match=f"the slices of '{name}' disagree"):
        read_mindspore_ckpt(str(path))


def test_crc_is_named_only_for_a_crc_mismatch(files, tmp_path):
    """One changed byte inside a tensor's data: the CRC catches it. The same change in a file
    without a CRC (MindCV's kind) is read, unverified, as MindSpore reads it."""
    raw = bytearray(open(files['base'], 'rb').read())
    at = len(raw) // 2
    raw[at] ^= 0x01
    damaged = tmp_path / 'damaged.ckpt'
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match='fails its CRC check'):
        read_any(str(damaged))
    unverified = tmp_path / 'no_crc.ckpt'
    unverified.write_bytes(bytes(raw[:-17]))
    assert len(read_any(str(unverified))) == len(read_any(files['base']))


def test_nonfinite_weights_load_only_when_allowed(files, monkeypatch):
    with pytest.raises(CheckpointError, match='MINDCOAT_ALLOW_NONFINITE=1'):
        create_model('coat_lite_tiny', checkpoint_path=files['nan_weights'], log=quiet, **TINY)
    monkeypatch.setenv('MINDCOAT_ALLOW_NONFINITE', '1')
    model = create_model('coat_lite_tiny', checkpoint_path=files['nan_weights'], log=quiet,
                         **TINY)
    assert sum(int(np.isnan(p.asnumpy()).sum()) for p in model.get_parameters()) == 1


@pytest.fixture(scope='module')
def train_ckpt(files):
    """A mindcoat training checkpoint of the tiny model (its parameters and EMA copies)."""
    model = create_model('coat_lite_tiny', **TINY)
    params = list(model.get_parameters())
    params += [ms.Parameter(p.data.copy(), name='ema.' + p.name) for p in params]
    path = os.path.join(files['root'], 'train.ckpt')
    save_checkpoint(path, params, 3, 30, 12.5, {'model': 'coat_lite_tiny'})
    return path, params


def test_resume_refuses_nonfinite_and_hostile_files(train_ckpt, tmp_path, monkeypatch):
    path, params = train_ckpt
    assert load_training_state(path, params) == (3, 30, 12.5)
    (tmp_path / 'short').mkdir()
    short = TOOL.make('short_record', path, str(tmp_path / 'short'))
    with pytest.raises(ResumeError, match='declares shape .* but holds') as info:
        load_training_state(short, params)
    assert str(info.value).startswith(f'cannot resume from {short}: record')
    stored = read_mindspore_ckpt(path)
    bad = 'ema.' + params[5].name
    stored[bad] = np.full_like(stored[bad], np.inf)
    broken = str(tmp_path / 'inf.ckpt')
    values = [ms.Parameter(ms.Tensor(v), name=k) for k, v in stored.items()
              if isinstance(v, np.ndarray) and k not in ('epoch', 'global_step', 'best_top1')]
    save_checkpoint(broken, values, 3, 30, 12.5, {'model': 'coat_lite_tiny'})
    before = [p.asnumpy().copy() for p in params]
    with pytest.raises(ResumeError, match=f"'{bad}' holds NaN or Inf") as info:
        load_training_state(broken, params)
    assert '\n' not in str(info.value) and 'MINDCOAT_ALLOW_NONFINITE' in str(info.value)
    assert all(np.array_equal(b, p.asnumpy()) for b, p in zip(before, params))
    monkeypatch.setenv('MINDCOAT_ALLOW_NONFINITE', '1')
    assert load_training_state(broken, params) == (3, 30, 12.5)


# ------------------------------------------------------------------ head, unexpected keys
@pytest.fixture(scope='module')
def base_weights(files):
    return {k: v for k, v in read_mindspore_ckpt(files['base']).items()}


def with_head(base_weights, tmp_path, **head):
    weights = {k: v for k, v in base_weights.items() if not k.startswith('head.')}
    weights.update({f'head.{k}': np.zeros(shape, np.float32) for k, shape in head.items()
                    if shape is not None})
    path = str(tmp_path / 'head.safetensors')
    save_file(weights, path)
    return path


def test_a_head_for_other_classes_is_reinitialised_whole(base_weights, tmp_path):
    path = with_head(base_weights, tmp_path, weight=(7, 16), bias=(7,))
    model = create_model('coat_lite_tiny', num_classes=10, **TINY)
    fresh = model.head.weight.asnumpy().copy()
    report = load_weights(model, path, log=quiet)
    assert report.head_reinitialised == 'checkpoint head.weight is (7, 16), model needs (10, 16)'
    assert np.array_equal(model.head.weight.asnumpy(), fresh) and not report.missing


@pytest.mark.parametrize('head, shown', [
    (dict(weight=(7, 12), bias=(7,)), 'head.weight (7, 12), head.bias (7,)'),  # in-features
    (dict(weight=(7, 16), bias=(5,)), 'head.weight (7, 16), head.bias (5,)'),  # disagree
    (dict(weight=(7, 16), bias=None), 'head.weight (7, 16), head.bias absent'),
    (dict(weight=None, bias=(7,)), 'head.weight absent, head.bias (7,)'),
    (dict(weight=(10, 16), bias=(7,)), 'head.weight (10, 16), head.bias (7,)'),  # half fits
    (dict(weight=(10, 16), bias=None), 'head.weight (10, 16), head.bias absent'),  # half a head
])
def test_any_other_head_is_refused_and_nothing_loads(head, shown, base_weights, tmp_path):
    path = with_head(base_weights, tmp_path, **head)
    model = create_model('coat_lite_tiny', num_classes=10, **TINY)
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    with pytest.raises(CheckpointError, match='fits neither coat_lite_tiny') as info:
        load_weights(model, path, strict=False, log=quiet)
    assert shown in str(info.value) and '(10, 16)' in str(info.value)
    assert all(np.array_equal(v, model.parameters_dict()[k].asnumpy())
               for k, v in before.items())


def test_unknown_keys_are_unexpected_not_training_state(base_weights, tmp_path):
    """A stray scalar and a parameter copy under an unknown prefix were skipped as 'training
    state'; they are unexpected now. Real training state still is training state."""
    weights = dict(base_weights)
    weights['calibration_scale'] = np.array(3.0, np.float32)
    weights['backup.head.weight'] = base_weights['head.weight']
    weights['adam_m.head.weight'] = base_weights['head.weight']
    weights['optimizer.step'] = np.array(4.0, np.float32)
    weights['global_step'] = np.array([4], np.int32)
    path = str(tmp_path / 'extra.safetensors')
    save_file(weights, path)
    model = create_model('coat_lite_tiny', **TINY)
    with pytest.raises(CheckpointError, match=r'2 keys coat_lite_tiny does not have ') as info:
        load_weights(model, path, log=quiet)
    assert 'calibration_scale' in str(info.value) and 'backup.head.weight' in str(info.value)
    report = load_weights(model, path, strict=False, log=quiet)
    assert sorted(report.unexpected) == ['backup.head.weight', 'calibration_scale']
    assert report.training_state == 3
