"""checkpoint_info: what a weight file says about its model, read through the safe readers. The
reference files are the ones tools/make_weight_fixtures.py wrote with the official code, timm
and MindCV (NUM_CLASSES = 10, 3 input channels, architectures no registered variant has)."""
import os

import mindspore as ms
import pytest

from mindcoat import create_model
from mindcoat.engine.checkpoint import save_checkpoint
from mindcoat.errors import CheckpointError
from mindcoat.weights import TRAIN_FORMAT as FORMAT, checkpoint_info

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'weights')
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))


@pytest.mark.parametrize('name,has_ema', [('official_lite_state_dict.pth', False),
                                           ('official_trainer_checkpoint.pth', True),
                                           ('timm_lite.safetensors', False),
                                           ('mindcv_coat.ckpt', False)])
def test_reference_files_give_their_head_size(name, has_ema):
    """The official trainer's file holds 'model_ema' beside 'model'; the others no EMA copy."""
    info = checkpoint_info(os.path.join(FIXTURES, name))
    assert info == {'num_classes': 10, 'in_channels': 3, 'format': 'weights', 'has_ema': has_ema}


def test_a_registered_variant_is_named(tmp_path):
    path = str(tmp_path / 'lite_tiny.ckpt')
    ms.save_checkpoint(create_model('coat_lite_tiny', num_classes=3, in_channels=1), path)
    assert checkpoint_info(path) == {'num_classes': 3, 'in_channels': 1,
                                     'model': 'coat_lite_tiny', 'format': 'weights',
                                     'has_ema': False}


@pytest.fixture(scope='module')
def tiny4():
    return list(create_model('coat_lite_tiny', num_classes=4, **TINY).get_parameters())


def test_trainer_checkpoint_gives_its_stored_settings(tiny4, tmp_path):
    path = str(tmp_path / 'run.ckpt')
    config = {'model': 'coat_lite_tiny', 'model_kwargs': {'embed_dims': [16] * 4,
                                                          'serial_depths': [1] * 4},
              'num_classes': 4, 'image_resize': 64, 'crop_pct': 0.9, 'interpolation': None,
              'mean': [0.5, 0.5, 0.5], 'lr': 0.1, 'class_names': ['a', 'b', 'c', 'd']}
    save_checkpoint(path, tiny4, 3, 30, 50.0, config)
    assert checkpoint_info(path) == {
        'format': FORMAT, 'has_ema': False, 'num_classes': 4, 'in_channels': 3,
        'model': 'coat_lite_tiny',
        'model_kwargs': config['model_kwargs'], 'image_size': 64, 'crop_pct': 0.9,
        'mean': [0.5, 0.5, 0.5], 'class_names': ['a', 'b', 'c', 'd']}


def test_a_trainer_checkpoint_with_ema_weights_says_so(tiny4, tmp_path):
    """validate.py takes the EMA weights for a YAML with ema: True from this key alone."""
    path = str(tmp_path / 'ema.ckpt')
    ema = [ms.Parameter(p.data.copy(), name='ema.' + p.name) for p in tiny4]
    save_checkpoint(path, tiny4 + ema, 1, 1, 0.0, {'model': 'coat_lite_tiny'})
    info = checkpoint_info(path)
    assert info['has_ema'] is True and info['num_classes'] == 4


def test_names_that_do_not_fit_the_head_are_dropped(tiny4, tmp_path):
    path = str(tmp_path / 'run.ckpt')
    save_checkpoint(path, tiny4, 1, 1, 0.0, {'model': 'coat_lite_tiny', 'class_names': ['a']})
    info = checkpoint_info(path)
    assert info['num_classes'] == 4 and 'class_names' not in info


def test_a_file_without_a_head_has_no_class_count(tiny4, tmp_path):
    path = str(tmp_path / 'backbone.ckpt')
    ms.save_checkpoint([{'name': p.name, 'data': p} for p in tiny4
                        if not p.name.startswith('head.')], path)
    info = checkpoint_info(path)
    assert 'num_classes' not in info and info['in_channels'] == 3


def test_trainer_checkpoint_with_a_config_that_is_not_an_object(tiny4, tmp_path):
    path = str(tmp_path / 'odd.ckpt')
    save_checkpoint(path, tiny4, 1, 1, 0.0, [1, 2])
    with pytest.raises(CheckpointError, match='stored config is not a JSON object'):
        checkpoint_info(path)


def test_only_regular_files_are_opened(tmp_path):
    os.mkfifo(tmp_path / 'w.ckpt')  # opening it would block until a writer appears
    with pytest.raises(CheckpointError, match='not a regular file'):
        checkpoint_info(str(tmp_path / 'w.ckpt'))
    with pytest.raises(CheckpointError, match='not a regular file'):
        checkpoint_info(str(tmp_path))
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        checkpoint_info(str(tmp_path / 'none.ckpt'))
