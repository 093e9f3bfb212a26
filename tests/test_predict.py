"""predict on real image files: JPEG/PNG written here plus real MNIST digits, with a corrupt file,
a missing file, a FIFO and a directory named .jpg in the list; probabilities equal a direct
computation; the class count, settings and names come from the checkpoint; bad arguments are one
line before any model is built."""
import json
import os
import signal
from contextlib import contextmanager

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from mindcoat import create_model
from mindcoat.demo import materialise_mnist
from mindcoat.engine.checkpoint import save_checkpoint
from mindcoat.predict import IMAGENET_CLASSES, class_names, load_image, main

TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
TINY_JSON = '{"embed_dims": [16, 16, 16, 16], "serial_depths": [1, 1, 1, 1]}'
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Two photos-like files, two MNIST digits, a corrupt JPEG, a missing PNG, a FIFO and a
    directory, both named .jpg."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:80]
    photo = np.stack([xx * 3, yy * 5, (xx + yy) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(root / 'gradient.jpg', quality=95)
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)).save(root / 'rgba.png')
    mnist = materialise_mnist(str(tmp_path_factory.mktemp('cache')), log=lambda *_: None)
    digits = [os.path.join(mnist, 'val', d, sorted(os.listdir(os.path.join(mnist, 'val', d)))[0])
              for d in ('3', '7')]
    (root / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a JPEG')
    os.mkfifo(root / 'fifo.jpg')
    (root / 'folder.jpg').mkdir()
    return dict(good=[str(root / 'gradient.jpg'), str(root / 'rgba.png')] + digits,
                broken=str(root / 'broken.jpg'), missing=str(root / 'missing.png'),
                fifo=str(root / 'fifo.jpg'), folder=str(root / 'folder.jpg'), mnist=mnist)


@contextmanager
def deadline(seconds=120):
    """Fails the test instead of hanging it if something opens a FIFO (SIGALRM interrupts the
    blocked open())."""
    def expire(*_):
        raise TimeoutError(f"predict still running after {seconds} s (blocked on a FIFO?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A 10-class tiny model and its checkpoint."""
    model = create_model('coat_lite_tiny', num_classes=10, **TINY)
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny10.ckpt')
    ms.save_checkpoint(model, path)
    return model, path


def direct_probs(model, path, size=32, crop_pct=0.875):
    """The official eval transform spelled out independently: resize the short side to
    int(size / crop_pct) with PIL bicubic, center crop, normalise; then softmax of the logits."""
    pil = Image.open(path).convert('RGB')
    short = int(size / crop_pct)
    w, h = pil.size
    pil = pil.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short),
                     Image.BICUBIC)
    top, left = int(round((pil.height - size) / 2)), int(round((pil.width - size) / 2))
    img = np.asarray(pil.crop((left, top, left + size, top + size)), np.float32)
    img = ((img - MEAN) / STD).transpose(2, 0, 1)
    model.set_train(False)
    logits = model(ms.Tensor(img[None].astype(np.float32))).asnumpy()[0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


def test_predict_matches_direct_computation_and_survives_bad_files(images, checkpoint, capsys,
                                                                    tmp_path):
    model, ckpt = checkpoint
    labels = tmp_path / 'digits.txt'
    labels.write_text(''.join(f'digit {i}\n' for i in range(10)))
    paths = images['good'][:2] + [images['broken'], images['fifo']] + images['good'][2:] + \
        [images['missing'], images['folder']]
    with deadline():
        code = main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
                     ckpt, '--labels', str(labels), '--image_size', '32', '--batch_size', '3',
                     '--json'] + paths)
    out, err = capsys.readouterr()
    assert code == 1  # some images failed
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    # the paths that are not regular files are refused before the model is built, in order;
    # the undecodable file when its batch is read
    assert errors == [f"error: cannot read {images['fifo']}: a FIFO, not a regular file",
                      f"error: cannot read {images['missing']}: no such file",
                      f"error: cannot read {images['folder']}: a directory, not a regular file",
                      errors[3]]
    assert errors[3].startswith(f"error: cannot read {images['broken']}: ")
    assert '4 of 8 images could not be read' in err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r['image'] for r in results] == images['good']  # the others still ran, in order
    for r in results:
        expected = direct_probs(model, r['image'])
        order = np.argsort(-expected, kind='stable')[:5]
        assert [t['index'] for t in r['top']] == order.tolist()
        assert [t['name'] for t in r['top']] == [f'digit {i}' for i in order]
        np.testing.assert_allclose([t['prob'] for t in r['top']], expected[order], atol=2e-6)


def test_class_count_and_settings_come_from_a_trainer_checkpoint(images, tmp_path, capsys):
    """A 4-class training checkpoint, predicted with nothing but --ckpt_path: the model, its
    overrides, the image size and the class names are the stored ones and the head is the
    trained one (before: a re-initialised 1000-way head and ImageNet names, exit 0)."""
    model = create_model('coat_lite_tiny', num_classes=4, **TINY)
    ckpt = str(tmp_path / 'run' / 'coat_lite_tiny-latest.ckpt')
    config = {'model': 'coat_lite_tiny', 'num_classes': 4, 'image_resize': 32,
              'model_kwargs': {'embed_dims': [16] * 4, 'serial_depths': [1] * 4},
              'class_names': ['cat', 'dog', 'fox', 'owl']}
    save_checkpoint(ckpt, list(model.get_parameters()), 1, 10, 0.0, config)
    assert main(['--ckpt_path', ckpt, '--json', '--topk', '4', images['good'][0]]) == 0
    top = json.loads(capsys.readouterr().out)['top']
    expected = direct_probs(model, images['good'][0])
    order = np.argsort(-expected, kind='stable')
    assert [t['index'] for t in top] == order.tolist()
    assert [t['name'] for t in top] == [config['class_names'][i] for i in order]
    np.testing.assert_allclose([t['prob'] for t in top], expected[order], atol=2e-6)


def test_weights_without_names_print_class_indices(images, checkpoint, capsys, tmp_path):
    """A plain 10-class weight file with a recipe YAML that says 1000 classes (as the ImageNet
    recipes do, after a fine-tune): the file's head decides, said in one line; with no names
    known, indices are printed, not ImageNet's names."""
    model, ckpt = checkpoint
    config = tmp_path / 'recipe.yaml'
    config.write_text('model: coat_lite_tiny\nnum_classes: 1000\nimage_resize: 32\n'
                      f'model_kwargs: {TINY_JSON}\n')
    assert main(['-c', str(config), '--ckpt_path', ckpt, '--topk', '3', images['good'][0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f'num_classes 10 from {ckpt} (the config says 1000)'
    assert out[1].startswith('loaded 104/104 parameters')  # the head too: nothing re-initialised
    out = out[2:]
    order = np.argsort(-direct_probs(model, images['good'][0]), kind='stable')[:3]
    assert out[0] == images['good'][0]
    assert [line.split()[-1] for line in out[1:]] == [f'[{i}]' for i in order]
    assert all(len(line.split()) == 3 for line in out[1:])  # rank, probability, index


def run_cli(argv):
    return main(argv)


def test_contradicting_num_classes_is_refused(images, checkpoint, capsys):
    assert run_cli(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
                    checkpoint[1], '--num_classes', '1000', images['good'][0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err == (f"error: --num_classes 1000 contradicts {checkpoint[1]}, whose weights have "
                   "10 classes; drop --num_classes")


@pytest.mark.parametrize('extra, words', [
    (['--batch_size', '0'], '--batch_size must be at least 1, got 0'),
    (['--topk', '0'], '--topk must be at least 1, got 0'),
    (['--batch_size', '100000'], '--batch_size must be at most 4,096, got 100000'),
    (['--num_classes', '-3'], '--num_classes must be at least 1, got -3'),
    (['--labels', '<fifo>'], 'labels file <fifo>: a FIFO, not a regular file'),
    (['--ckpt_path', '<folder>'], 'checkpoint <folder>: a directory, not a regular file'),
])
def test_bad_arguments_are_one_line(images, checkpoint, capsys, extra, words):
    swap = {'<fifo>': images['fifo'], '<folder>': images['folder']}
    extra = [swap.get(a, a) for a in extra]
    for mark, path in swap.items():
        words = words.replace(mark, path)
    argv = ['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
            checkpoint[1]] + extra + [images['good'][0]]
    with deadline():
        assert run_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ''  # no model was loaded (it prints "loaded N/M parameters")
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_a_binary_labels_file_is_one_line(images, checkpoint, capsys, tmp_path):
    labels = tmp_path / 'labels.txt'
    labels.write_bytes(bytes(range(256)) * 8)
    assert run_cli(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
                    checkpoint[1], '--labels', str(labels), images['good'][0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'is not UTF-8 text' in err[0], err


def test_topk_above_the_class_count_lists_every_class(images, checkpoint, capsys):
    """A top-5 default (or a typed --topk 11) on a 10-class model lists the 10, best first."""
    argv = ['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
            checkpoint[1], '--json', images['good'][0]]
    assert run_cli(argv + ['--topk', '11']) == 0
    out, err = capsys.readouterr()
    top = json.loads(out.strip().splitlines()[-1])['top']
    assert sorted(t['index'] for t in top) == list(range(10))
    probs = [t['prob'] for t in top]
    assert probs == sorted(probs, reverse=True)
    assert '--topk 11: the model has 10 classes, all are listed' in err


@pytest.mark.parametrize('which, reason', [('fifo', 'a FIFO, not a regular file'),
                                           ('missing', 'no such file'),
                                           ('folder', 'a directory, not a regular file')])
def test_only_unreadable_inputs_build_no_model(images, capsys, which, reason):
    with deadline():
        assert main(['--model', 'coat_lite_tiny', images[which]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ''  # not even the "weights are random" warning: no model was built
    assert captured.err.strip().splitlines() == [f"error: cannot read {images[which]}: {reason}"]


def test_a_path_that_became_a_fifo_is_not_waited_on(images):
    """The open itself refuses a FIFO (a file swapped after the stat check): O_NONBLOCK, then
    fstat on the descriptor."""
    with deadline(), pytest.raises(OSError, match='a FIFO, not a regular file'):
        load_image(images['fifo'])
    assert load_image(images['good'][0]).size == (80, 48)


def test_human_readable_output_with_imagenet_names(images, capsys):
    code = main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--image_size', '32',
                 '--topk', '3'] + images['good'][2:])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    names = class_names(1000)
    for path in images['good'][2:]:
        i = out.index(path)
        ranked = out[i + 1:i + 4]
        assert len(ranked) == 3 and all(line.startswith(f'  {r}. ') for r, line in
                                        zip((1, 2, 3), ranked))
        for line in ranked:  # the printed name is the packaged name of the printed index
            index = int(line.rsplit('[', 1)[1].rstrip(']'))
            assert names[index] in line


def test_packaged_imagenet_names():
    names = class_names(1000)
    with open(IMAGENET_CLASSES, encoding='utf-8') as f:
        lines = f.read().splitlines()
    assert names == lines and len(names) == 1000 and all(names)
    assert class_names(4) is None  # indices only: no made-up names
    assert class_names(4, stored=['a', 'b', 'c', 'd']) == ['a', 'b', 'c', 'd']


def test_labels_count_must_match_the_model(images, checkpoint, tmp_path, capsys):
    labels = tmp_path / 'three.txt'
    labels.write_text('a\nb\nc\n')
    code = main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path',
                 checkpoint[1], '--labels', str(labels), '--num_classes', '10',
                 images['good'][0]])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '3 classes' in err and '10' in err
