"""The eight CoaT variants: registry, exact parameter counts, numerical parity with the reference
(outputs of timm's port of mlpc-ucsd/CoaT in tests/fixtures/parity.npz, made by
tools/make_parity_fixtures.py from the seeded weights of parity_weights.py), the backbone mode,
and the input-size rule."""
import contextlib
import os

import mindspore as ms
import numpy as np
import pytest

from mindcoat import create_model, list_models
from mindcoat.models import DATA_CONFIGS
from mindcoat.ops.dispatch import native_ops
from parity_weights import BATCH, FEATURE_CASES, GRAD_CASES, GRAD_PARAMS, PARITY_CASES, SEED, \
    seeded_cotangent, seeded_input, seeded_weights

FIXTURES = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'parity.npz'))

# the reference's counts with 1000 classes (timm / the official release)
PARAMS = {
    'coat_lite_tiny': 5_721_960, 'coat_lite_mini': 11_011_560, 'coat_lite_small': 19_838_504,
    'coat_lite_medium': 44_571_048, 'coat_lite_medium_384': 44_571_048,
    'coat_tiny': 5_498_540, 'coat_mini': 10_337_004, 'coat_small': 21_693_908,
}


def with_seeded_weights(model):
    """Sets the parity fixtures' weights, which are keyed by the reference's parameter names:
    the model's names must be exactly those."""
    params = {p.name: p for p in model.get_parameters()}
    weights = seeded_weights({n: p.shape for n, p in params.items()}, SEED)
    for name, param in params.items():
        param.set_data(ms.Tensor(weights[name]))
    return model


def test_the_eight_published_variants():
    assert list_models() == sorted(PARAMS)
    with pytest.raises(ValueError, match="unknown model 'coat_huge'.*coat_lite_tiny"):
        create_model('coat_huge')


@pytest.mark.parametrize('name', sorted(PARAMS))
def test_parameter_count_equals_the_reference(name):
    model = create_model(name)
    assert sum(int(np.prod(p.shape)) for p in model.trainable_params()) == PARAMS[name]
    # shared modules are stored once, under the reference's first name
    names = {p.name for p in model.trainable_params()}
    assert {'cls_token1', 'patch_embed1.proj.weight', 'cpe1.proj.weight',
            'crpe1.conv_list.0.weight', 'serial_blocks1.0.factoratt_crpe.qkv.weight',
            'head.weight'} <= names
    assert not any('.cpe.' in n or '.crpe.' in n or 'mlp3' in n for n in names)
    if name.startswith('coat_lite'):
        assert not any(n.startswith(('parallel_blocks', 'aggregate', 'norm2')) for n in names)
    else:
        assert {'parallel_blocks.5.mlp2.fc1.weight', 'aggregate.weight', 'norm2.weight'} <= names


def test_data_defaults_per_variant():
    assert DATA_CONFIGS['coat_lite_tiny']['input_size'] == (3, 224, 224)
    # official src/datasets.py: resize to int(256 / 224 * size), center crop (438 -> 384)
    assert DATA_CONFIGS['coat_tiny']['crop_pct'] == 0.875
    assert DATA_CONFIGS['coat_tiny']['interpolation'] == 'bicubic'
    big = DATA_CONFIGS['coat_lite_medium_384']
    assert big['input_size'] == (3, 384, 384) and big['crop_pct'] == 0.875
    assert big['crop_mode'] == 'center'
    assert create_model('coat_mini', num_classes=7).default_cfg['mean'] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize('name,size', PARITY_CASES,
                         ids=[f'{n}-{h}x{w}' for n, (h, w) in PARITY_CASES])
def test_logits_match_the_reference(name, size):
    """Same weights, same input: max abs diff <= 1e-4 against the reference, graph mode."""
    h, w = size
    model = with_seeded_weights(create_model(name))
    model.set_train(False)
    out = model(ms.Tensor(seeded_input(BATCH, h, w, SEED))).asnumpy()
    expected = FIXTURES[f'{name}/{h}x{w}']
    assert out.shape == expected.shape == (BATCH, 1000)
    assert np.abs(out - expected).max() <= 1e-4


@pytest.mark.parametrize('name', ['coat_lite_tiny', 'coat_tiny'])
def test_native_operators_match_the_reference(name):
    """MindSpore's own operators only (the path taken on Ascend and GPU): the same logits."""
    with native_ops():
        model = with_seeded_weights(create_model(name))
        model.set_train(False)
        out = model(ms.Tensor(seeded_input(BATCH, 160, 192, SEED))).asnumpy()
    assert np.abs(out - FIXTURES[f'{name}/160x192']).max() <= 1e-4


class _CotangentLoss(ms.nn.Cell):
    def __init__(self, model, cotangent):
        super().__init__()
        self.model = model
        self.cotangent = ms.Tensor(cotangent)

    def construct(self, x):
        return (self.model(x) * self.cotangent).sum()


@pytest.mark.parametrize('native', [False, True], ids=['cpu-kernels', 'native'])
@pytest.mark.parametrize('name,size', GRAD_CASES, ids=[n for n, _ in GRAD_CASES])
def test_gradients_match_the_reference(name, size, native):
    """Backward parity: parameter gradients of sum(logits * cotangent) against the reference's
    autograd, through the CPU kernels and through MindSpore's native operators."""
    h, w = size
    with native_ops() if native else contextlib.nullcontext():
        model = with_seeded_weights(create_model(name))
        model.set_train(True)  # no dropout or drop path configured: train == eval numerically
        params = [p for p in model.trainable_params() if p.name in GRAD_PARAMS[name]]
        names = [p.name for p in params]  # before wrapping: the wrapper prefixes them 'model.'
        loss = _CotangentLoss(model, seeded_cotangent(BATCH, seed=SEED))
        grads = ms.grad(loss, grad_position=None, weights=ms.ParameterTuple(params))(
            ms.Tensor(seeded_input(BATCH, h, w, SEED)))
    assert len(grads) == len(GRAD_PARAMS[name])
    for pname, grad in zip(names, grads):
        expected = FIXTURES[f'{name}/grad/{h}x{w}/{pname}']
        scale = max(1.0, float(np.abs(expected).max()))
        assert np.abs(grad.asnumpy() - expected).max() <= 1e-4 * scale, pname


@pytest.mark.parametrize('name', ['coat_lite_tiny', 'coat_tiny'])
def test_pynative_mode_matches_the_reference(name):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = with_seeded_weights(create_model(name))
    model.set_train(False)
    out = model(ms.Tensor(seeded_input(BATCH, 160, 192, SEED))).asnumpy()
    assert np.abs(out - FIXTURES[f'{name}/160x192']).max() <= 1e-4


@pytest.mark.parametrize('name,size', FEATURE_CASES)
def test_features_only_gives_the_reference_maps(name, size):
    """The four maps (NCHW, strides 4/8/16/32, the variant's dims) from the classifier's weights:
    the reference's return_interm_layers outputs."""
    h, w = size
    classifier = with_seeded_weights(create_model(name))
    backbone = create_model(name, features_only=True)
    trained = {p.name: p for p in classifier.get_parameters()}
    backbone_names = {p.name for p in backbone.get_parameters()}
    assert backbone_names < set(trained)  # no classifier, nothing of its own
    for p in backbone.get_parameters():
        p.set_data(trained[p.name].data.copy())
    backbone.set_train(False)
    feats = backbone(ms.Tensor(seeded_input(1, h, w, SEED)))
    assert len(feats) == 4
    dims = classifier.embed_dims
    for i, feat in enumerate(feats):
        expected = FIXTURES[f'{name}/features/{h}x{w}/{i}']
        stride = 4 * 2 ** i
        assert feat.shape == expected.shape == (1, dims[i], h // stride, w // stride)
        scale = max(1.0, float(np.abs(expected).max()))  # the parallel blocks grow the maps
        assert np.abs(feat.asnumpy() - expected).max() <= 1e-4 * scale


def test_out_indices_select_maps():
    backbone = create_model('coat_lite_mini', features_only=True, out_indices=(1, 3))
    feats = backbone(ms.Tensor(np.zeros((2, 3, 64, 128), np.float32)))
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 16), (2, 512, 2, 4)]
    with pytest.raises(ValueError, match='out_indices'):
        create_model('coat_lite_mini', features_only=True, out_indices=(4,))


@pytest.mark.parametrize('size', [(225, 224), (224, 200), (100, 100)])
def test_a_size_off_the_multiple_of_32_fails_at_once(size):
    model = create_model('coat_lite_tiny')
    with pytest.raises(ValueError, match='multiple of 32'):
        model(ms.Tensor(np.zeros((1, 3) + size, np.float32)))


def test_one_set_of_weights_serves_every_multiple_of_32():
    model = create_model('coat_lite_tiny', num_classes=5)
    model.set_train(False)
    for size in ((64, 64), (96, 256), (224, 224)):
        assert model(ms.Tensor(np.zeros((1, 3) + size, np.float32))).shape == (1, 5)


def test_weight_decay_exemptions_are_declared_by_the_model():
    model = create_model('coat_tiny')
    exempt = model.no_weight_decay_names()
    assert {'cls_token1', 'cls_token4', 'norm2.weight', 'aggregate.bias', 'head.bias',
            'patch_embed1.norm.weight', 'serial_blocks1.0.factoratt_crpe.qkv.bias'} <= exempt
    assert not exempt & {'head.weight', 'serial_blocks1.0.factoratt_crpe.qkv.weight',
                         'cpe1.proj.weight', 'aggregate.weight', 'patch_embed1.proj.weight'}


def test_stochastic_depth_drops_whole_samples():
    from mindcoat.models.layers import DropPath
    drop = DropPath(0.5)
    drop.set_train(True)
    out = drop(ms.Tensor(np.ones((256, 5, 3), np.float32))).asnumpy()
    per_sample = out.reshape(256, -1)
    # each sample is kept whole (scaled by 1/(1-p)) or dropped whole
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 64 < (per_sample[:, 0] == 0).sum() < 192
    # the gradient is the same mask (its own backward keeps only the per-sample mask)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.uniform(1, 2, (64, 5, 3)).astype(np.float32))
    w = ms.Tensor(rng.normal(size=(64, 5, 3)).astype(np.float32))

    def loss(t):
        out = drop(t)
        return (out * w).sum(), out

    (_, out), dx = ms.value_and_grad(loss, has_aux=True)(x)
    mask = np.round(out.asnumpy() / x.asnumpy(), 3)
    assert set(np.unique(mask)) == {0.0, 2.0}
    assert np.allclose(dx.asnumpy(), w.asnumpy() * mask, rtol=1e-6, atol=0)
    # with a residual (one pass on the CPU): residual + the dropped branch; the residual's
    # gradient passes unscaled
    r = ms.Tensor(rng.normal(size=(64, 5, 3)).astype(np.float32))

    def loss_residual(t, res):
        out = drop(t, res)
        return (out * w).sum(), out

    (_, out), (dx, dr) = ms.value_and_grad(loss_residual, grad_position=(0, 1), has_aux=True)(x, r)
    mask = np.round((out.asnumpy() - r.asnumpy()) / x.asnumpy(), 3)
    assert set(np.unique(mask)) == {0.0, 2.0}
    assert np.all(mask.reshape(64, -1).min(1) == mask.reshape(64, -1).max(1))
    assert np.allclose(dx.asnumpy(), w.asnumpy() * mask, rtol=1e-6, atol=0)
    assert np.array_equal(dr.asnumpy(), w.asnumpy())
    drop.set_train(False)
    assert np.array_equal(drop(ms.Tensor(np.ones((4, 5, 3), np.float32))).asnumpy(),
                          np.ones((4, 5, 3)))


# --- MindCV's / timm's Python API ------------------------------------------------------------
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))


def test_list_models_filters_like_mindcv_and_timm():
    assert list_models('coat_lite*') == ['coat_lite_medium', 'coat_lite_medium_384',
                                         'coat_lite_mini', 'coat_lite_small', 'coat_lite_tiny']
    assert list_models('coat*', pretrained=True) == sorted(PARAMS)  # all eight have weights
    assert list_models(filter=['*tiny', '*mini']) == ['coat_lite_mini', 'coat_lite_tiny',
                                                      'coat_mini', 'coat_tiny']
    assert list_models('coat*', 'coat', True, '*lite*') == ['coat_mini', 'coat_small', 'coat_tiny']
    assert list_models(module='resnet') == [] and list_models('vit*') == []


def test_create_model_takes_mindcvs_arguments_and_the_name_alias():
    by_keyword = create_model(model_name='coat_tiny', num_classes=7, in_channels=1,
                              drop_rate=None, parallel_depth=1, **TINY)
    positional = create_model('coat_tiny', 7, False, 1, '', False, False, parallel_depth=1, **TINY)
    alias = create_model(name='coat_tiny', num_classes=7, in_channels=1, parallel_depth=1, **TINY)
    for model in (by_keyword, positional, alias):
        assert model.name == 'coat_tiny' and model.head.weight.shape == (7, 16)
        assert model.patch_embed1.proj.weight.shape == (16, 1, 4, 4)
        assert len(model.parallel_blocks) == 1
    with pytest.raises(TypeError, match="model_name='coat_tiny' and name='coat_mini'"):
        create_model('coat_tiny', name='coat_mini')
    with pytest.raises(TypeError, match='needs a model name'):
        create_model(num_classes=3)


def test_a_misspelt_argument_is_a_type_error_naming_the_valid_ones():
    """An embed_dim= typo used to build the default model silently."""
    with pytest.raises(TypeError, match=r"'embed_dim'; valid: model_name.*embed_dims.*"
                                        r"drop_path_rate"):
        create_model('coat_lite_tiny', embed_dim=(16, 16, 16, 16))
    with pytest.raises(TypeError, match='unexpected keyword'):
        create_model('coat_lite_tiny', **TINY, pretrained_cfg=None)
    with pytest.raises(TypeError):  # the class itself no longer swallows unknown arguments
        type(create_model('coat_lite_tiny', **TINY))(**TINY, embed_dim=3)
    # mindcoat's old second positional argument was pretrained: a bool there is refused
    with pytest.raises(TypeError, match='second positional argument is num_classes'):
        create_model('coat_lite_tiny', True)


def _save(tmp_path, name, entries):
    path = str(tmp_path / name)
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in entries.items()], path)
    return path


def test_ema_true_loads_the_ema_weights_never_the_raw_ones(tmp_path):
    source = create_model('coat_lite_tiny', num_classes=5, **TINY)
    raw = {p.name: p.asnumpy() for p in source.get_parameters()}
    ema = {k: v + 1.0 for k, v in raw.items()}
    both = _save(tmp_path, 'trainer.ckpt', {**raw, **{'ema.' + k: v for k, v in ema.items()}})
    quiet = [].append
    for load in (dict(checkpoint_path=both), dict(pretrained=both)):
        model = create_model('coat_lite_tiny', num_classes=5, ema=True, log=quiet, **TINY, **load)
        got = {p.name: p.asnumpy() for p in model.get_parameters()}
        assert all(np.array_equal(got[k], ema[k]) for k in raw)
    plain = create_model('coat_lite_tiny', num_classes=5, checkpoint_path=both, log=quiet, **TINY)
    assert all(np.array_equal(p.asnumpy(), raw[p.name]) for p in plain.get_parameters())
    raw_only = _save(tmp_path, 'raw.ckpt', raw)
    with pytest.raises(ValueError, match='no EMA weights'):
        create_model('coat_lite_tiny', num_classes=5, checkpoint_path=raw_only, ema=True,
                     log=quiet, **TINY)
    with pytest.raises(ValueError, match='ema=True loads the EMA weights of a file'):
        create_model('coat_lite_tiny', ema=True, **TINY)


def test_pretrained_and_checkpoint_path_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match='pass one of them'):
        create_model('coat_lite_tiny', pretrained=True, checkpoint_path='x.ckpt', **TINY)


def test_default_cfg_says_where_the_official_weights_are():
    cfg = create_model('coat_lite_medium_384', **TINY).default_cfg
    assert cfg['url'] == ('https://vcl.ucsd.edu/coat/pretrained/'
                          'coat_lite_medium_384x384_f9129688.pth')
    assert cfg['hash_prefix'] == 'f9129688' and cfg['architecture'] == 'coat_lite_medium_384'
