"""Weight files written by the real tools (tests/fixtures/weights, made by
tools/make_weight_fixtures.py from shrunken CoaT variants): the official CoaT class's bare
``torch.save(model.state_dict())``, the official trainer's checkpoint (model, model_ema, AdamW,
timm's cosine scheduler, GradScaler, epoch, args Namespace), timm's safetensors and MindCV's
.ckpt. Each converts and gives the reference logits; a converted file carries a CRC that catches
damage."""
import argparse
import os

import mindspore as ms
import numpy as np
import pytest

from mindcoat import create_model
from mindcoat.convert import convert_checkpoint
from mindcoat.errors import CheckpointError
from mindcoat.weights import load_weights
from mindcoat.weights.readers import LazyTensor, read_any, read_mindspore_ckpt

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'weights')
# the shrunken variants of tools/make_weight_fixtures.py
LITE = dict(embed_dims=(8, 16, 16, 24), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 1, 1))
COAT = dict(embed_dims=(8, 16, 16, 16), serial_depths=(1, 1, 1, 1), parallel_depth=1,
            mlp_ratios=(1, 1, 1, 1))
CASES = {  # reference key: (file, variant, model_kwargs, EMA)
    'official_lite_state_dict': ('official_lite_state_dict.pth', 'coat_lite_tiny', LITE, False),
    'official_trainer_checkpoint': ('official_trainer_checkpoint.pth', 'coat_tiny', COAT, False),
    'official_trainer_checkpoint/ema': ('official_trainer_checkpoint.pth', 'coat_tiny', COAT,
                                        True),
    'timm_lite': ('timm_lite.safetensors', 'coat_lite_tiny', LITE, False),
    'mindcv_coat': ('mindcv_coat.ckpt', 'coat_tiny', COAT, False),
}


def quiet(*_):
    pass


@pytest.fixture(scope='module')
def reference():
    return dict(np.load(os.path.join(FIXTURES, 'reference.npz')))


def logits(model, x):
    ms.set_context(mode=ms.PYNATIVE_MODE)  # a tiny model: faster than compiling a graph
    model.set_train(False)
    return model(ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize('key', list(CASES))
def test_real_file_converts_to_the_reference_logits(key, reference, tmp_path):
    """Each real file converts (python -m mindcoat.convert's code path, CRC'd output) and the
    converted model gives the tool's own logits. The first case is the bare
    torch.save(model.state_dict()) that the restricted unpickler used to refuse."""
    name, variant, kwargs, ema = CASES[key]
    out = tmp_path / 'converted.ckpt'
    lines = []
    convert_checkpoint(os.path.join(FIXTURES, name), variant, str(out), use_ema=ema,
                       num_classes=10, model_kwargs=kwargs, log=lines.append)
    assert lines[0].startswith('loaded ') and '/' in lines[0]
    n = lines[0].split()[1].split('/')
    assert n[0] == n[1], lines  # every parameter found
    model = create_model(variant, num_classes=10, **kwargs)
    load_weights(model, str(out), log=quiet)
    got = logits(model, reference['input'])
    assert np.abs(got - reference[key]).max() <= 1e-4


def test_trainer_checkpoint_is_read_as_data(reference):
    """Everything the official trainer saves comes back as plain data: the args Namespace, AdamW
    state (tensors validated but not read), timm's scheduler state, the GradScaler's."""
    tree = read_any(os.path.join(FIXTURES, 'official_trainer_checkpoint.pth'))
    assert set(tree) == {'model', 'model_ema', 'optimizer', 'lr_scheduler', 'epoch', 'args',
                         'scaler'}
    args = tree['args']
    assert isinstance(args, argparse.Namespace) and args.model == 'coat_tiny'
    assert args.opt == 'adamw' and args.nb_classes == 10 and args.model_ema is True
    assert tree['lr_scheduler']['t_initial'] == 300
    assert tree['scaler']['scale'] == 65536.0
    state = tree['optimizer']['state']
    assert all(isinstance(k, int) for k in state)  # optimizer state keys are ints, and allowed
    moment = state[0]['exp_avg']
    assert isinstance(moment, LazyTensor) and moment.dtype == np.float32
    assert tree['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999)
    weights = tree['model']
    assert tuple(weights['cls_token2'].shape) == (1, 1, 16)


def test_mindcv_file_has_no_crc_and_still_loads():
    """MindCV saves without a CRC; reading with crc_check=True still loads it (unverified)."""
    path = os.path.join(FIXTURES, 'mindcv_coat.ckpt')
    with open(path, 'rb') as f:
        assert f.read()[-17:-10] != b'crc_num'
    assert 'patch_embed1.norm.gamma' in read_mindspore_ckpt(path)


def test_damaged_converted_ckpt_fails_its_crc(reference, tmp_path):
    """convert writes a CRC; 200 random bytes in the middle of the file are caught in one line
    and the model keeps its weights."""
    out = tmp_path / 'lite.ckpt'
    convert_checkpoint(os.path.join(FIXTURES, 'timm_lite.safetensors'), 'coat_lite_tiny',
                       str(out), num_classes=10, model_kwargs=LITE, log=quiet)
    raw = bytearray(out.read_bytes())
    assert raw[-17:-10] == b'crc_num'
    middle = len(raw) // 2
    raw[middle:middle + 200] = np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()
    damaged = tmp_path / 'damaged.ckpt'
    damaged.write_bytes(bytes(raw))
    model = create_model('coat_lite_tiny', num_classes=10, **LITE)
    before = logits(model, reference['input'])
    with pytest.raises(CheckpointError, match='fails its CRC check') as info:
        load_weights(model, str(damaged), log=quiet)
    assert '\n' not in str(info.value)
    assert np.array_equal(logits(model, reference['input']), before)
    # the trainer's helper: MindSpore's own objects, same check
    with pytest.raises(CheckpointError, match='CRC'):
        read_mindspore_ckpt(str(damaged), numpy=False)
    assert isinstance(read_mindspore_ckpt(str(out), numpy=False)['head.weight'], ms.Parameter)


def test_training_state_beside_the_weights_is_not_unexpected(tmp_path, reference):
    """A MindSpore training checkpoint of MindCV's model: AdamW moments under their own
    prefixes (in MindCV's spelling: q/k/v, gamma/beta, shared cells under a block), a step
    counter and a learning rate load strictly, as training state."""
    weights = {k: v for k, v in read_mindspore_ckpt(os.path.join(FIXTURES, 'mindcv_coat.ckpt'))
               .items()}
    entries = dict(weights)
    for prefix in ('adam_m.', 'adam_v.'):
        entries.update({prefix + k: np.zeros_like(v) for k, v in weights.items()})
    entries['global_step'] = np.array([30], np.int32)
    entries['learning_rate'] = np.array(1e-3, np.float32)
    path = str(tmp_path / 'mindcv_train.ckpt')
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in entries.items()], path)
    model = create_model('coat_tiny', num_classes=10, **COAT)
    report = load_weights(model, path, log=quiet)
    assert not report.unexpected and not report.missing
    assert report.training_state > len(weights)  # two moments per tensor (q/k/v fused)
    got = logits(model, reference['input'])
    assert np.abs(got - reference['mindcv_coat']).max() <= 1e-4


def test_every_kind_of_tensor_torch_writes(reference):
    """torch_objects.pth (pickle protocol 4): bfloat16 widened to float32, float16, int64, bool,
    non-contiguous and offset views, an expanded (stride 0) tensor, a 0-d tensor, a Parameter
    with Python attributes (_rebuild_parameter_with_state), torch.Size and a dtype."""
    tree = read_any(os.path.join(FIXTURES, 'torch_objects.pth'))
    expected = {k.split('/', 1)[1]: v for k, v in reference.items() if k.startswith('objects/')}
    assert len(expected) == 10
    for key, value in expected.items():
        got = tree[key].numpy()
        assert got.dtype == (np.float32 if key == 'bfloat16' else value.dtype), key
        assert got.shape == value.shape and np.array_equal(got, value), key
    assert tree['size'] == (2, 3) and tree['dtype'] == 'torch.float32'
