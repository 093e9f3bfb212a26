"""ONNX export: the erf the export form uses is float32-accurate; the file onnxruntime runs gives
the Cell's logits (a CoaT-Lite and a CoaT with parallel blocks, a fixed and an open batch),
carries its opset, input and output in its metadata, and bad input leaves no file behind."""
import json
import math
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindcoat import create_model
from mindcoat.export import check_onnx, export_model, main
from mindcoat.ops.dispatch import export_ops, exporting
from mindcoat.ops import resize_tokens_native
from mindcoat.ops.gelu import erf_rational, gelu_rational
from mindcoat.ops.resize import resize_tokens_export

onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')

PHOTOS = os.path.join(os.path.dirname(__file__), 'fixtures', 'augment', 'photos')
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
TINY_JSON = json.dumps(TINY)


def erf_inputs():
    """Float32 inputs: dense where erf is not yet within 1e-7 of +-1 (|x| < 3.77), tiny and
    subnormal magnitudes, and the tails up to infinity; both signs."""
    dense = np.linspace(0, 3.8, 1 << 21, dtype=np.float32)
    tiny = np.float32(10.0) ** np.linspace(-45, -1, 4000, dtype=np.float32)
    tail = np.concatenate([np.linspace(3.8, 12, 20000, dtype=np.float32),
                           np.array([1e2, 1e4, 1e10, 1e30, 3.4e38, np.inf], np.float32)])
    x = np.concatenate([dense, tiny, tail])
    return np.concatenate([x, -x])


def exact_erf(x):
    return np.array([math.erf(v) for v in x.astype(np.float64).tolist()])


class _Erf(nn.Cell):
    def construct(self, x):
        return erf_rational(x)


def onnx_run(path, x):
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x})[0]


def test_erf_rational_is_accurate_to_float32_rounding(tmp_path):
    """Absolute error below 1e-6 against math.erf, evaluated in float32 as the exported graph
    runs it: by MindSpore, and by onnxruntime on the exported operators; exactly +-1 at the
    tails and 0 at 0."""
    x = erf_inputs()
    expected = exact_erf(x)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    by_mindspore = erf_rational(ms.Tensor(x)).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    path = str(tmp_path / 'erf.onnx')
    ms.onnx.export(_Erf(), ms.Tensor(x), file_name=path)
    by_onnxruntime = onnx_run(path, x)
    for got in (by_mindspore, by_onnxruntime):
        assert got.dtype == np.float32
        assert np.abs(got.astype(np.float64) - expected).max() < 1e-6
        assert np.all(np.abs(got[np.abs(x) >= 4]) == 1.0) and got[0] == 0.0
    normal = np.abs(x) >= np.finfo(np.float32).tiny  # either may flush subnormals to zero
    np.testing.assert_array_equal(by_mindspore[normal], by_onnxruntime[normal])


def test_gelu_export_form_is_exact_gelu():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.concatenate([np.linspace(-12, 12, 200001, dtype=np.float32),
                        np.array([-1e30, 1e30], np.float32)])
    got = gelu_rational(ms.Tensor(x)).asnumpy().astype(np.float64)
    xs = x.astype(np.float64)
    exact = 0.5 * xs * (1 + exact_erf(x / np.sqrt(2)))
    assert np.all(np.abs(got - exact) <= 1e-6 * np.maximum(1, np.abs(xs)))
    assert got[-2] == 0 and got[-1] == np.float32(1e30)  # saturated: exactly 0 and x


@pytest.mark.parametrize('grid, out', [((7, 7), (14, 14)), ((14, 14), (7, 7)), ((7, 7), (28, 28)),
                                       ((28, 28), (7, 7)), ((3, 5), (12, 10))])
def test_resize_export_form_is_bilinear_resize(grid, out):
    """The two products with constant matrices give ops.interpolate's bilinear resize."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 1 + grid[0] * grid[1], 5))
                  .astype(np.float32))
    expected = resize_tokens_native(x, *grid, *out).asnumpy()
    np.testing.assert_allclose(resize_tokens_export(x, *grid, *out).asnumpy(), expected,
                               rtol=0, atol=1e-6)


def test_onnxruntime_gives_the_cells_logits_at_two_batch_sizes(tmp_path):
    """A real variant with parallel blocks (cross-scale resizes) at 64 px, the batch left open:
    traced at 2, run at 1 and 3."""
    model = create_model('coat_tiny', num_classes=10)
    model.set_train(False)
    path = export_model(model, str(tmp_path / 'net'), 64, dynamic_batch=True, file_format='ONNX')
    assert os.listdir(tmp_path) == ['net.onnx']
    assert not exporting()
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    diff, batches = check_onnx(model, path, x, dynamic_batch=True)
    assert batches == (1, 3) and diff < 1e-5
    meta = metadata(path)
    assert json.loads(meta['input_shape']) == ['batch', 3, 64, 64]
    assert json.loads(meta['output_shape']) == ['batch', 10]


def metadata(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_cli_exports_checks_on_photos_and_describes_the_file(tmp_path, capsys):
    """A CoaT-Lite (tiny overrides) with a fixed batch of 2, checked on four real photos."""
    out = str(tmp_path / 'lite.onnx')
    photos = [os.path.join(PHOTOS, n) for n in sorted(os.listdir(PHOTOS))]
    assert main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--format', 'onnx',
                 '--image_size', '64', '--batch_size', '2', '-o', out,
                 '--check_images', *photos]) == 0
    printed = capsys.readouterr().out
    assert 'check: onnxruntime vs Cell on 4 images (batch 2)' in printed
    assert float(printed.split('max |logit diff| = ')[1].split()[0]) < 1e-5
    meta = metadata(out)
    assert meta['opset'] == str(onnx.load(out).opset_import[0].version) == '11'
    assert (meta['input'], meta['output']) == ('image', 'logits')
    assert json.loads(meta['input_shape']) == [2, 3, 64, 64]
    assert json.loads(meta['output_shape']) == [2, 1000]
    assert meta['model'] == 'coat_lite_tiny' and json.loads(meta['mean'])[0] == 0.485
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image']
    assert session.get_outputs()[0].shape == [2, 1000]


@pytest.fixture(scope='module')
def five_classes(tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp('w') / 'w.ckpt')
    ms.save_checkpoint(create_model('coat_lite_tiny', num_classes=5, **TINY), ckpt)
    return ckpt


@pytest.mark.parametrize('argv, words, status', [
    (['--format', 'onxx'], 'unknown --format ONXX; use MINDIR or ONNX', 2),
    (['--format', 'onnx', '--image_size', '100'], 'multiple of 32', 2),
    (['--format', 'onnx', '--model_kwargs', '{"embed_dims": [32, 32, 32, 32]}',
      '--ckpt_path', '<5-class>'], '<5-class>', 1),
    (['--format', 'mindir', '--check_images', '<photo>'], '--check_images is for --format ONNX',
     2),
    (['--format', 'onnx', '--check_images', 'missing.png'], 'missing.png', 2),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, words, status, five_classes, tmp_path,
                                                  capsys):
    marks = {'<5-class>': five_classes, '<photo>': os.path.join(PHOTOS, 'rocket.jpg')}
    for mark, path in marks.items():
        argv = [a.replace(mark, path) for a in argv]
        words = words.replace(mark, path)
    argv = ['--model', 'coat_lite_tiny', '-o', str(tmp_path / 'out' / 'x.onnx'), *argv]
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('error: ') and words in err
    assert not os.path.exists(tmp_path / 'out') or os.listdir(tmp_path / 'out') == []


def test_a_failed_check_keeps_the_previous_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / 'net.onnx'
    out.write_bytes(b'previous')
    monkeypatch.setattr('mindcoat.export.CHECK_TOLERANCE', -1.0)  # no difference is small enough
    assert main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--format', 'onnx',
                 '--image_size', '32', '-o', str(out), '--check']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'check failed' in err and 'nothing was written' in err
    assert out.read_bytes() == b'previous' and os.listdir(tmp_path) == ['net.onnx']


def test_export_ops_restores_the_normal_path():
    before = os.environ.get('MINDCOAT_NATIVE')
    with export_ops():
        assert exporting()
        with export_ops():
            assert exporting()
        assert exporting()
    assert not exporting() and os.environ.get('MINDCOAT_NATIVE') == before
