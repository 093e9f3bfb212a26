"""predict on real image files: JPEG/PNG written here plus real MNIST digits, with a corrupt and a
missing file in the list; probabilities equal a direct computation; class names from the
packaged ImageNet list or --labels."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from mindcoat import create_model
from mindcoat.demo import materialise_mnist
from mindcoat.predict import IMAGENET_CLASSES, class_names, main

TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
TINY_JSON = '{"embed_dims": [16, 16, 16, 16], "serial_depths": [1, 1, 1, 1]}'
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Two photos-like files, two MNIST digits, a corrupt JPEG and a missing PNG."""
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
    return dict(good=[str(root / 'gradient.jpg'), str(root / 'rgba.png')] + digits,
                broken=str(root / 'broken.jpg'), missing=str(root / 'missing.png'),
                mnist=mnist)


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
    paths = images['good'][:2] + [images['broken']] + images['good'][2:] + [images['missing']]
    code = main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON, '--ckpt_path', ckpt,
                 '--labels', str(labels), '--image_size', '32', '--batch_size', '3', '--json']
                + paths)
    out, err = capsys.readouterr()
    assert code == 1  # some images failed
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 2
    assert images['broken'] in errors[0] and images['missing'] in errors[1]
    results = [json.loads(line) for line in out.splitlines()]
    assert [r['image'] for r in results] == images['good']  # the others still ran, in order
    for r in results:
        expected = direct_probs(model, r['image'])
        order = np.argsort(-expected, kind='stable')[:5]
        assert [t['index'] for t in r['top']] == order.tolist()
        assert [t['name'] for t in r['top']] == [f'digit {i}' for i in order]
        np.testing.assert_allclose([t['prob'] for t in r['top']], expected[order], atol=2e-6)


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
    assert class_names(4) == ['class 0', 'class 1', 'class 2', 'class 3']


def test_labels_count_must_match_the_model(images, checkpoint, tmp_path, capsys):
    from mindcoat.cli import run
    labels = tmp_path / 'three.txt'
    labels.write_text('a\nb\nc\n')
    with pytest.raises(SystemExit) as exc:
        run(lambda: main(['--model', 'coat_lite_tiny', '--model_kwargs', TINY_JSON,
                          '--ckpt_path', checkpoint[1], '--labels', str(labels),
                          '--num_classes', '10', images['good'][0]]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and '3 classes' in err and '10' in err
