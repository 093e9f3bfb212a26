"""MindIR export: the reloaded graph computes the Cell's logits; the class count comes from the
checkpoint and a contradiction is refused; bad arguments are refused in one line. (ONNX:
test_onnx.py.)"""
import os

import mindspore as ms
import numpy as np
import pytest

from mindcoat import create_model
from mindcoat.export import check_export, export_model, main

TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
TINY_JSON = '{"embed_dims": [16, 16, 16, 16], "serial_depths": [1, 1, 1, 1]}'


def test_mindir_reload_gives_the_cells_logits(tmp_path):
    model = create_model('coat_lite_tiny', num_classes=7, **TINY)
    model.set_train(False)
    path = export_model(model, str(tmp_path / 'net.mindir'), image_size=64, dynamic_batch=True)
    assert os.listdir(tmp_path) == ['net.mindir']  # no MindSpore suffix, no temporary left over
    graph = ms.nn.GraphCell(ms.load(path))
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    expected = model(ms.Tensor(x)).asnumpy()
    got = graph(ms.Tensor(x)).asnumpy()
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def five_classes(tmp_path_factory):
    src = create_model('coat_lite_tiny', num_classes=5, **TINY)
    ckpt = str(tmp_path_factory.mktemp('w') / 'w.ckpt')
    ms.save_checkpoint(src, ckpt)
    return src, ckpt


def test_cli_exports_trained_weights_and_checks(five_classes, tmp_path, capsys):
    """No --num_classes: the 5-class head of the file is exported, not a fresh 1000-way one."""
    src, ckpt = five_classes
    out = str(tmp_path / 'sub' / 'model')  # the suffix is added
    assert main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path', ckpt,
                 '--image_size', '32', '--batch_size', '2', '-o', out, '--check']) == 0
    printed = capsys.readouterr().out
    assert 'check: reloaded graph vs Cell' in printed
    assert 'loaded 104/104 parameters' in printed and 're-initialised' not in printed
    out += '.mindir'
    assert os.path.isfile(out)
    # the file holds the checkpoint's weights: compare with the source Cell itself
    src.set_train(False)
    assert check_export(src, out, 32, batch_size=2) < 1e-5


def run_cli(argv):
    return main(argv)


def test_an_unknown_format_is_refused_in_one_line(tmp_path, capsys):
    assert run_cli(['--model', 'coat_lite_tiny', '--format', 'tflite', '-o', 'x.tflite']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'unknown --format TFLITE' in err and 'ONNX' in err
    assert not os.path.exists('x.tflite')


@pytest.mark.parametrize('argv, words', [
    (['--model', 'coat_lite_tiny', '--image_size', '100'], 'multiple of 32'),
    (['--model', 'coat_nano'], 'unknown model'),
    (['--model', 'coat_lite_tiny', '--ckpt_path', 'missing.ckpt', '--image_size', '32'],
     'missing.ckpt'),
    (['--model', 'coat_lite_tiny', '--batch_size', '0'], '--batch_size must be at least 1, got 0'),
    (['--model', 'coat_lite_tiny', '-o', '<dir>'], '-o <dir> is a directory'),
    (['--model', 'coat_lite_tiny', '-o', '<dir>/net'], '-o <dir>/net.mindir is a directory'),
    (['--model', 'coat_lite_tiny', '-o', '<fifo>'], 'exists and is not a regular file'),
    (['--model', 'coat_lite_tiny', '--ckpt_path', '<fifo>'], 'not a regular file'),
    (['--model', 'coat_lite_tiny', '--ckpt_path', '<5-class>', '--num_classes', '1000'],
     'num_classes 1000 contradicts <5-class>, whose weights have 5 classes'),
])
def test_bad_input_is_one_line(argv, words, five_classes, tmp_path, capsys):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'net.mindir').mkdir()
    os.mkfifo(tmp_path / 'fifo.mindir')
    marks = {'<dir>': str(tmp_path / 'out'), '<fifo>': str(tmp_path / 'fifo.mindir'),
             '<5-class>': five_classes[1]}
    for mark, path in marks.items():
        argv = [a.replace(mark, path) for a in argv]
        words = words.replace(mark, path)
    assert run_cli(argv) != 0
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and words in err
    assert captured.out == ''  # no model was built or loaded
    assert sorted(os.listdir(tmp_path)) == ['fifo.mindir', 'out']  # nothing written
    assert os.listdir(tmp_path / 'out') == ['net.mindir']
