"""validate.py on a small image folder equals a direct computation (the model applied to the same
images, preprocessed here step by step), for weights in every format the converter reads, EMA
included; sharded evaluation sums to the single-device numbers; bad input is one line."""
import json
import os

import mindspore as ms
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from mindcoat import create_model
from mindcoat.models import DATA_CONFIGS
from weight_files import mindcv_style, state_dict, write_torch_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dims=(16, 16, 16, 16), serial_depths=(1, 1, 1, 1))
TINY_ARGS = ['--model', 'coat_lite_tiny', '--model_kwargs', '{"embed_dims": [16, 16, 16, 16], '
             '"serial_depths": [1, 1, 1, 1]}', '--image_resize', '32', '--num_classes', '7',
             '--batch_size', '4', '--num_parallel_workers', '1']
CLASSES = [f'c{i}' for i in range(7)]
SIZE = 32
CROP_PCT = DATA_CONFIGS['coat_lite_tiny']['crop_pct']  # the variant's default eval crop


from mindcoat import validate  # noqa: E402


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """data/{train,val}/c0..c6: 3 val images per class (JPEG and PNG, assorted sizes: 21, so
    the last batch of 4 is short) plus one corrupt file that must be skipped."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(7)
    for split, n in (('train', 1), ('val', 3)):
        for c in CLASSES:
            os.makedirs(root / split / c)
            for j in range(n):
                h, w = rng.integers(28, 70, size=2)
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(root / split / c / (f'{j}.png' if j % 2 else f'{j}.jpg'), quality=92)
    (root / 'val' / 'c3' / 'z_corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not an image')
    return str(root)


def val_files(folder):
    return [(os.path.join(folder, 'val', c, f), i) for i, c in enumerate(CLASSES)
            for f in sorted(os.listdir(os.path.join(folder, 'val', c))) if 'corrupt' not in f]


def official_eval_transform(path, size, crop_pct):
    """The official eval transform, written out from torchvision's definitions: Resize(short side
    to int(size / crop_pct), PIL bicubic), CenterCrop(size), ToTensor, Normalize."""
    img = Image.open(path).convert('RGB')
    short = int(size / crop_pct)
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(new, Image.BICUBIC)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((x - mean) / std).astype(np.float32).transpose(2, 0, 1)


def direct_numbers(model, folder, crop_pct=CROP_PCT):
    """Loss / Acc@1 / Acc@5 computed here: the official eval transform, one image at a time
    through the model, numpy cross entropy."""
    model.set_train(False)
    losses, top1, top5 = [], [], []
    for path, label in val_files(folder):
        x = official_eval_transform(path, SIZE, crop_pct)
        logits = model(ms.Tensor(x[None])).asnumpy()[0].astype(np.float64)
        log_p = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        rank = int((logits > logits[label]).sum())
        losses.append(-log_p[label])
        top1.append(rank < 1)
        top5.append(rank < 5)
    return dict(loss=float(np.mean(losses)), top1=100 * np.mean(top1), top5=100 * np.mean(top5),
                num_images=len(losses))


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """A 7-class tiny model, a second one standing for its EMA, and their files in each format."""
    out = tmp_path_factory.mktemp('weights')
    ms.set_seed(1)
    model = create_model('coat_lite_tiny', num_classes=7, **TINY)
    ema = create_model('coat_lite_tiny', num_classes=7, **TINY)
    sd, sd_ema = state_dict(model), state_dict(ema)
    files = {}
    files['mindcoat'] = str(out / 'mindcoat.ckpt')  # model by name, EMA under 'ema.<name>'
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in sd.items()] +
                       [{'name': 'ema.' + k, 'data': ms.Tensor(v)} for k, v in sd_ema.items()],
                       files['mindcoat'])
    files['official'] = str(out / 'official.pth')
    write_torch_zip(files['official'], {'model': sd, 'model_ema': sd_ema, 'epoch': 299})
    files['timm'] = str(out / 'timm.safetensors')
    save_file(sd, files['timm'])
    files['timm_pth'] = str(out / 'timm.pth')  # a flat state dict, torch.save'd
    write_torch_zip(files['timm_pth'], sd)
    files['mindcv'] = str(out / 'mindcv.ckpt')
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in mindcv_style(model).items()],
                       files['mindcv'])
    return model, ema, files


def run_validate(argv, capsys):
    code = validate.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), err  # the last line is the JSON result


def assert_same(result, expected):
    assert result['num_images'] == expected['num_images']
    assert result['top1'] == pytest.approx(expected['top1'], abs=1e-9)
    assert result['top5'] == pytest.approx(expected['top5'], abs=1e-9)
    assert result['loss'] == pytest.approx(expected['loss'], rel=1e-5)


@pytest.mark.parametrize('fmt', ['mindcoat', 'official', 'timm', 'timm_pth', 'mindcv'])
def test_validate_equals_direct_computation_for_each_format(folder, weights, fmt, capsys):
    model, _, files = weights
    expected = direct_numbers(model, folder)
    assert 0 < expected['top5'] < 100 and expected['loss'] > 0  # a non-degenerate check
    result, err = run_validate(TINY_ARGS + ['--data_dir', folder, '--ckpt_path', files[fmt],
                                            '--json'], capsys)
    assert_same(result, expected)
    assert result['skipped_images'] == 1 and 'z_corrupt.jpg' in err


def test_a_recipe_yaml_runs_on_one_device(folder, weights, capsys):
    """The README's line: a configs/coat recipe (distribute: True, 8 workers, 224 px) works
    outside msrun; flags override its values."""
    model, _, files = weights
    result, err = run_validate(['--config', os.path.join(ROOT, 'configs', 'coat',
                                                         'coat_lite_tiny_ascend.yaml')]
                               + TINY_ARGS + ['--data_dir', folder, '--ckpt_path', files['timm']],
                               capsys)
    assert 'not started by msrun' in err and result['ranks'] == 1
    assert result['crop_pct'] == 0.875  # the recipe's: the official Resize(256) + CenterCrop(224)
    assert_same(result, direct_numbers(model, folder, crop_pct=0.875))


@pytest.mark.parametrize('fmt', ['mindcoat', 'official'])
def test_ema_weights_are_picked(folder, weights, fmt, capsys, tmp_path):
    _, ema, files = weights
    results = str(tmp_path / 'results.jsonl')
    result, _ = run_validate(TINY_ARGS + ['--data_dir', folder, '--ckpt_path', files[fmt],
                                          '--ema', '--results_file', results], capsys)
    assert_same(result, direct_numbers(ema, folder))
    assert result['ema'] is True
    with open(results) as f:
        assert json.loads(f.read().splitlines()[-1]) == result


def test_shards_sum_to_the_single_device_numbers(folder, weights):
    """What each msrun rank computes (its shard, no padding), summed, equals one pass."""
    model, _, _ = weights
    cfg = validate.parse_args(TINY_ARGS + ['--data_dir', folder, '--crop_pct', str(CROP_PCT)])
    from mindcoat.data import resolve_data_settings
    from mindcoat.engine import EvalCounts, count_batches
    settings = resolve_data_settings(cfg, cfg.model)
    total = EvalCounts()
    seen = 0
    for rank in range(3):
        data = validate.eval_data(cfg, settings, rank=rank, world=3)
        counts = count_batches(model, data.loader.create_tuple_iterator(
            num_epochs=1, output_numpy=True), cfg.batch_size)
        total.values += counts.values
        seen += counts.values[3]
    assert seen == len(val_files(folder))
    expected = direct_numbers(model, folder)
    assert_same(total.summary(), expected)


def test_class_count_comes_from_the_checkpoint(folder, weights, capsys):
    """A 7-class file validated with a recipe YAML (num_classes: 1000) and no --num_classes gets
    its own head (before: a fresh 1000-way head, Acc@1 0.000, exit 0); --num_classes that
    contradicts the file is one line."""
    _, ema, files = weights
    recipe = os.path.join(ROOT, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')
    no_count = [a for i, a in enumerate(TINY_ARGS)
                if '--num_classes' not in TINY_ARGS[max(i - 1, 0):i + 1]]
    result, err = run_validate(['-c', recipe] + no_count + ['--data_dir', folder, '--ckpt_path',
                                                           files['official'], '--json'], capsys)
    assert 'num_classes 7 from' in err and 're-initialised' not in err
    # the recipe says ema: True and the official trainer file has EMA weights: those are used
    assert result['ema'] is True
    assert_same(result, direct_numbers(ema, folder))
    code = validate.main(no_count + ['--num_classes', '1000', '--data_dir', folder,
                                     '--ckpt_path', files['mindcoat']])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'contradicts' in err


@pytest.mark.parametrize('extra, words', [
    (['--data_dir', 'nowhere'], 'nowhere'),
    (['--data_dir', '.', '--image_resize', '48'], 'multiple of 32'),
    (['--data_dir', '.', '--batch_sise', '8'], "did you mean 'batch_size'"),
])
def test_bad_input_is_one_line(extra, words, capsys):
    code = validate.main(TINY_ARGS + extra)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_msrun_two_ranks_equal_one_device(folder, weights, tmp_path, capsys):
    """A real 2-worker msrun: each rank evaluates its shard, rank 0 prints the summed result."""
    import shutil
    import socket
    import subprocess
    import sys
    _, _, files = weights
    args = TINY_ARGS + ['--data_dir', folder, '--ckpt_path', files['timm'], '--json']
    single, _ = run_validate(args, capsys)
    msrun = shutil.which('msrun', path=os.path.dirname(sys.executable)) or shutil.which('msrun')
    assert msrun, 'msrun ships with mindspore'
    with socket.socket() as s:  # a free port for the scheduler
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    logs = tmp_path / 'logs'
    proc = subprocess.run(
        [msrun, '--worker_num', '2', '--local_worker_num', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(port), '--log_dir', str(logs), '--join', 'True',
         os.path.join(ROOT, 'validate.py')] + args + ['--distribute', 'True'],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    worker_logs = {p: open(logs / p).read() for p in sorted(os.listdir(logs)) if 'worker' in p}
    assert proc.returncode == 0, worker_logs
    lines = [ln for ln in worker_logs['worker_0.log'].splitlines() if ln.startswith('{')]
    result = json.loads(lines[-1])
    assert result['ranks'] == 2
    assert_same(result, single)
    assert result['skipped_images'] == 1  # the corrupt file, met by exactly one rank
    assert not any(ln.startswith('{') for ln in worker_logs['worker_1.log'].splitlines())


@pytest.mark.parametrize('fmt, has_ema', [('mindcoat', True), ('timm', False)])
def test_the_yaml_s_ema_takes_the_ema_weights_where_the_file_has_them(
        folder, weights, fmt, has_ema, capsys, tmp_path):
    """As MindCV's validate.py, the YAML's ema: True evaluates the file's EMA weights, and says
    so; a file without them (an official release) is evaluated as it is, with one line saying
    the file has no EMA weights (before: the YAML's ema was ignored). The YAML's val_amp_level O2
    is for Ascend/GPU: the CPU evaluates in float32 (the direct numbers) and says so once."""
    model, ema, files = weights
    config = tmp_path / 'ema.yaml'
    config.write_text('ema: True\nval_amp_level: O2\n')
    result, err = run_validate(['-c', str(config)] + TINY_ARGS + [
        '--data_dir', folder, '--ckpt_path', files[fmt], '--json'], capsys)
    assert result['ema'] is has_ema
    assert_same(result, direct_numbers(ema if has_ema else model, folder))
    words = (f"evaluating the EMA weights of {files[fmt]}" if has_ema else
             f"{files[fmt]} has no EMA weights: evaluating its weights")
    assert sum(words in line for line in err.splitlines()) == 1, err
    assert sum('val_amp_level O2 is for Ascend/GPU: the CPU evaluates in float32' in line
               for line in err.splitlines()) == 1, err


@pytest.mark.parametrize('flags', [['--ema'], ['--ckpt_use_ema', 'True']])
def test_asking_for_ema_weights_of_a_file_without_them_is_one_line(folder, weights, flags,
                                                                   capsys):
    _, _, files = weights
    code = validate.main(TINY_ARGS + ['--data_dir', folder, '--ckpt_path', files['timm']] + flags)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'no EMA weights' in err, err
