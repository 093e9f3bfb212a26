"""Run by .ci/run in a fresh venv holding the installed wheel (not the checkout), from a temporary
directory, with MINDCOAT_WHEEL_TEST=1: the installed package takes every CPU fast path. The
normal suite skips it (the checkout is importable there, so it would prove nothing)."""
import json
import os
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.skipif(os.environ.get('MINDCOAT_WHEEL_TEST') != '1',
                                reason='runs in the wheel venv of .ci/run only')


def test_mindcoat_comes_from_site_packages():
    import mindcoat
    site = os.path.realpath(sysconfig.get_paths()['purelib'])
    assert os.path.realpath(mindcoat.__file__).startswith(site + os.sep), mindcoat.__file__
    assert os.path.isfile(os.path.join(os.path.dirname(mindcoat.__file__), 'ops', 'csrc',
                                       'common.h'))


def test_every_cpu_fast_path_is_active():
    """Builds every kernel from the installed sources into an empty cache and probes it."""
    assert os.listdir(os.environ['MINDCOAT_CACHE']) == [], 'the wheel check needs an empty cache'
    res = subprocess.run([sys.executable, '-m', 'mindcoat.ops', '--json'], capture_output=True,
                         text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    print(res.stdout)
    from mindcoat.ops.dispatch import OPS
    assert set(OPS) >= {'dwconv', 'crpe', 'attention', 'resize', 'linear', 'layernorm', 'gelu',
                        'patch'}
    paths = {row['op']: (row['path'], row['detail']) for row in report['ops']}
    assert sorted(paths) == sorted(OPS)
    slow = {op: detail for op, (path, detail) in paths.items() if path != 'fast'}
    assert slow == {}, f'native path in the installed wheel: {slow}'


# the ops only the detectors use (test_a_tiny_detector_...)
DETECTOR_OPS = {'conv', 'roi_align', 'nms'}


def test_a_tiny_coat_runs_its_kernels_with_the_native_logits():
    """In-process, graph mode, inference and training forward: the Custom ops of every op load
    in MindSpore and give the native operators' logits (coat_tiny has parallel blocks, so the
    cross-scale resize runs too)."""
    import mindspore as ms
    import numpy as np

    import mindcoat
    from mindcoat.ops import dispatch
    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)
    model = mindcoat.create_model('coat_tiny', num_classes=5, parallel_depth=1,
                                  embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
    rng = np.random.default_rng(0)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
    x = ms.Tensor(rng.normal(size=(2, 3, 32, 32)).astype(np.float32))
    fast = []
    for training in (False, True):  # GELU: fused into fc1 (inference), the mlp kernel (training)
        model.set_train(training)  # (no dropout, no drop path: the same logits)
        fast.append(model(x).asnumpy())
    # the gradient norm is the training step's, not the model's: clip the weights as gradients
    from mindcoat.optim import ClipGradNorm
    grads = tuple(p.value() for p in model.trainable_params())
    clipped = ClipGradNorm(0.5)(grads)[0].asnumpy()
    used = {op for (op, _), libs in dispatch._choices.items() if libs is not None}
    assert used | DETECTOR_OPS == set(dispatch.OPS), f'fast: {sorted(used)}'
    with dispatch.native_ops():
        native = mindcoat.create_model('coat_tiny', num_classes=5, parallel_depth=1,
                                       embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
        ms.load_param_into_net(native, {p.name: p for p in model.get_parameters()})
        native.set_train(False)
        ref = native(x).asnumpy()
        clipped_native = ClipGradNorm(0.5)(grads)[0].asnumpy()
    np.testing.assert_allclose(clipped, clipped_native, rtol=1e-6)
    assert not np.array_equal(clipped, grads[0].asnumpy())  # it did clip
    for logits in fast:
        assert np.abs(logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_a_tiny_detector_runs_its_kernels_with_the_native_detections():
    """A shrunken Mask R-CNN in graph mode: the convolution kernels (FPN, RPN, mask head), and
    RoIAlign and NMS in C on the host, give the native path's detections and masks."""
    from dataclasses import replace

    import mindspore as ms
    import numpy as np

    import mindcoat
    from mindcoat.benchmark import give_detections
    from mindcoat.models.detection import default_config
    from mindcoat.ops import dispatch
    ms.set_device('CPU')
    ms.set_context(mode=ms.GRAPH_MODE)
    config = default_config('mask_rcnn_coat_lite_mini_3x')
    config = replace(config,
                     backbone=replace(config.backbone, embed_dims=(16, 16, 16, 16),
                                      serial_depths=(1, 1, 1, 1)),
                     heads=replace(config.heads, fpn_channels=16, rpn_feat_channels=16,
                                   fc_channels=32, mask_channels=16),
                     pipeline=replace(config.pipeline, img_scale=(128, 96)))
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)

    def detect(seed_from=None):
        net = mindcoat.create_detector(config=config, log=lambda *a: None)
        if seed_from is None:
            rng = np.random.default_rng(2)
            for p in net.get_parameters():
                p.set_data(ms.Tensor(rng.normal(0, 0.2, p.shape).astype(np.float32)))
            give_detections(net)
        else:
            ms.load_param_into_net(net, {p.name: p for p in seed_from.get_parameters()})
        net.set_train(False)
        return net, net.detect([image])[0]

    net, fast = detect()
    used = {op for (op, _), libs in dispatch._choices.items() if libs is not None}
    assert DETECTOR_OPS <= used, f'fast: {sorted(used)}'
    with dispatch.native_ops():
        _, native = detect(seed_from=net)
        assert not any(libs for libs in dispatch._choices.values())
    assert len(fast.boxes) == len(native.boxes) > 0
    np.testing.assert_array_equal(fast.labels, native.labels)
    np.testing.assert_allclose(fast.boxes, native.boxes, atol=1e-2, rtol=0)
    np.testing.assert_allclose(fast.scores, native.scores, atol=1e-4, rtol=0)
    assert (fast.masks != native.masks).mean() < 1e-3 and fast.masks.any()


def _image_folder(root, classes=10, per_class=(4, 2), size=32):
    """root/train and root/val: each class a colour on a noisy background (real PNG files)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in zip(('train', 'val'), per_class):
        for c in range(classes):
            folder = os.path.join(root, split, f'class_{c}')
            os.makedirs(folder)
            for i in range(count):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[4:-4, 4:-4] = ((37 * c) % 256, (91 * c) % 256, (53 * c) % 256)
                Image.fromarray(img).save(os.path.join(folder, f'{i}.png'))
    return root


def test_the_installed_commands_train_and_validate_the_demo_config(tmp_path):
    """No checkout here: the console scripts come from the wheel, and the demo config from the
    configs/ it carries (named as the README names it). The venv is not activated here, so the
    scripts are looked for beside its python."""
    bindir = os.path.dirname(sys.executable)

    def script(name):
        path = os.path.join(bindir, f'mindcoat-{name}')
        assert os.path.isfile(path) and os.access(path, os.X_OK), path
        return path
    for name in ('train', 'validate', 'predict', 'detect', 'export', 'convert', 'benchmark',
                 'demo', 'plot'):
        script(name)
    assert not os.path.exists('configs')  # found in the installed package, not here
    data = _image_folder(str(tmp_path / 'data'))
    out = tmp_path / 'run'
    config = 'configs/demo/coat_lite_mnist.yaml'
    train = subprocess.run([script('train'), '-c', config, '--data_dir', data, '--epoch_size',
                            '1', '--batch_size', '8', '--num_parallel_workers', '1',
                            '--ckpt_save_dir', str(out), '--device_target', 'CPU'],
                           capture_output=True, text=True, timeout=1200)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    record = json.loads((out / 'log.jsonl').read_text().splitlines()[-1])
    ckpt = out / 'coat_lite_tiny-latest.ckpt'
    res = subprocess.run([script('validate'), '-c', config, '--data_dir', data, '--ckpt_path',
                          str(ckpt), '--json', '--device_target', 'CPU'],
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result['num_images'] == 20 and result['top1'] == record['val_top1']
