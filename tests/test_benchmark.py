"""`python -m mindcoat.benchmark` on tiny runs: the output fields, that train mode times the
trainer's step built from the config, its one-line errors (never timings); and the speed
table's ratio and goal logic of tools/compare_speed.py."""
import json
import os
import subprocess
import sys

import yaml
from train_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = {'model', 'mode', 'batch_size', 'image_size', 'amp_level', 'graph_mode', 'device',
          'depthwise_kernel', 'images_per_s', 'ms_per_step', 'compile_s', 'first_step_s',
          'peak_rss_mb', 'steps', 'warmup', 'step_times_ms', 'mindspore', 'threads'}
TINY = {'embed_dims': [16, 16, 16, 16], 'serial_depths': [1, 1, 1, 1]}


def _run(tmp_path, *args):
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'mindcoat.benchmark', '--device', 'CPU', *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)


def _bench(tmp_path, *args):
    res = _run(tmp_path, '--batch_size', '2', '--image_size', '64', '--steps', '2',
               '--warmup', '1', '--json', *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _tiny_recipe(tmp_path, **changes):
    """coat_lite_tiny's shipped recipe on a tiny architecture, with ``changes``."""
    with open(os.path.join(REPO, 'configs', 'coat', 'coat_lite_tiny_ascend.yaml')) as f:
        cfg = yaml.safe_load(f)
    cfg.update(model_kwargs=TINY, **changes)
    path = tmp_path / 'tiny.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _check_common(out, mode):
    assert FIELDS <= set(out), FIELDS - set(out)
    assert (out['model'], out['mode'], out['batch_size'], out['image_size']) == \
        ('coat_lite_tiny', mode, 2, 64)
    assert out['device'] == 'CPU' and out['depthwise_kernel'] == 'custom'
    assert out['steps'] == 2 and len(out['step_times_ms']) == 2
    assert out['images_per_s'] > 0 and out['ms_per_step'] > 0 and out['compile_s'] >= 0
    assert abs(out['images_per_s'] * out['ms_per_step'] / 1000.0 - 2) < 1e-6
    assert out['peak_rss_mb'] > 100


def test_infer_json_fields(tmp_path):
    out = _bench(tmp_path, '--model', 'coat_lite_tiny', '--mode', 'infer',
                 '--model_kwargs', json.dumps(TINY))
    _check_common(out, 'infer')
    assert out['amp_level'] == 'O0' and 'recipe' not in out


def test_train_times_the_trainers_step_from_the_config(tmp_path):
    """The recipe's EMA and a changed clipping reach the timed step, --model_kwargs overrides
    the config's drop path (it used to crash on the duplicate key) and keeps the config's
    architecture, and every call (first, warm-up, timed) was one update of the trainer's AdamW."""
    config = _tiny_recipe(tmp_path, clip_grad=True, clip_value=2.5, drop_path_rate=0.1)
    out = _bench(tmp_path, '--mode', 'train', '--config', config,
                 '--model_kwargs', json.dumps({'drop_path_rate': 0.05}))
    _check_common(out, 'train')
    recipe = out['recipe']
    assert recipe['config'] == config
    assert (recipe['optimizer'], recipe['ema'], recipe['ema_decay']) == ('adamw', True, 0.99996)
    assert (recipe['clip_grad_norm'], recipe['drop_path_rate']) == (2.5, 0.05)
    # the CPU trains in float32 as train.py does: the recipe's O2 and its loss scaler are off
    assert out['amp_level'] == recipe['amp_level'] == 'O0' and recipe['loss_scaler'] is None
    assert recipe['optimizer_updates'] == 1 + 1 + 2


def test_bad_requests_are_one_line(tmp_path, capsys):
    """Refused before anything is built (in this process: no compile), exit status 1."""
    from mindcoat import benchmark

    config = _tiny_recipe(tmp_path)
    (tmp_path / 'augmix').mkdir()
    augmix = _tiny_recipe(tmp_path / 'augmix', aug_splits=3)
    cases = [(['--mode', 'train', '--model', 'coat_tiny', '--config', config],
              'is the recipe of coat_lite_tiny'),
             (['--mode', 'train', '--model', 'coat_huge'], "unknown model 'coat_huge'"),
             (['--mode', 'train', '--config', str(tmp_path / 'missing.yaml')], 'missing.yaml'),
             (['--image_size', '100'], 'multiple of 32'),
             # train.py's own refusals (check_training), before anything is built
             (['--mode', 'train', '--config', augmix], 'aug_splits 3 (AugMix splits')]
    for args, message in cases:
        assert benchmark.main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], \
            (args, lines)


def test_config_the_trainer_refuses_is_one_line(tmp_path):
    """The trainer's own check (create_optimizer) stops the benchmark with its message."""
    res = _run(tmp_path, '--mode', 'train', '--config', _tiny_recipe(tmp_path, opt='sgd'))
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and "opt 'sgd'" in lines[0], \
        res.stderr[-2000:]


def test_speed_table_ratios_and_goals():
    """Throughput goals are met by a high mindcoat/timm ratio, latency and memory goals by a
    low one; a peer without the variant shows a dash, a failed run says so."""
    cs = load_script('tools/compare_speed.py')

    def record(system, measurement, images_per_s=None, ms=None, mb=1000.0, error=None):
        result = None if error else {'images_per_s': images_per_s, 'ms_per_step': ms,
                                     'peak_rss_mb': mb, 'compile_s': 1.0}
        return {'system': system, 'model': 'coat_tiny', 'measurement': measurement,
                'batch_size': 1 if measurement == 'latency' else 16, 'image_size': 224,
                'result': result, 'error': error, 'load_before': [2.0, 2.0, 2.0]}

    records = [record('mindcoat', 'infer', 30.0, mb=800.0), record('timm', 'infer', 20.0),
               record('mindcv', 'infer', 2.0),
               record('mindcoat', 'train', 12.0, mb=1200.0), record('timm', 'train', 10.0),
               record('mindcv', 'train', error='stopped'),
               record('mindcoat', 'latency', ms=12.0), record('timm', 'latency', ms=10.0)]
    rows = {row.split(' | ')[1].split()[0]: row.split(' | ')
            for row in cs.table_rows(records, ['coat_tiny'])}
    assert rows['infer'][6:8] == ['1.50x', '>= 1.50 yes']
    assert rows['infer'][9:11] == ['0.80x', '<= 1.00 yes']
    assert rows['train'][5] == 'failed' and rows['train'][6:8] == ['1.20x', '>= 1.30 NO']
    assert rows['train'][9:11] == ['1.20x', '<= 1.00 NO']
    assert rows['latency'][2:6] == ['ms', '12.00', '10.00', '—']
    assert rows['latency'][6:8] == ['1.20x', '<= 1.00 NO']


def _paced_cmd(steps):
    return [sys.executable, '-m', 'mindcoat.benchmark', '--device', 'CPU', '--json', '--paced',
            '--model', 'coat_lite_tiny', '--model_kwargs', json.dumps(TINY), '--batch_size', '2',
            '--image_size', '64', '--steps', str(steps), '--warmup', '0']


def test_paced_benchmark_steps_only_when_told(tmp_path):
    """--paced: after compiling it says PACE and takes no timed step until a line arrives; with
    stdin closed instead it stops with one line and no figures."""
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.Popen(_paced_cmd(1), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert proc.stdout.readline().strip() == 'PACE'
    proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.wait(timeout=300) == 1 and out.strip() == '', out
    assert err.strip().splitlines() == ['error: --paced: stdin closed before the next step'], err


def test_compare_speed_steps_two_systems_in_turn(tmp_path):
    """tools/compare_speed.py's lockstep driver on two real paced benchmarks: both measured
    together, each with all its timed steps."""
    import types

    cs = load_script('tools/compare_speed.py')
    limits = types.SimpleNamespace(timeout=600, max_rss_gb=8.0, min_free_gb=0.5)
    out = cs.run_lockstep([('mindcoat', _paced_cmd(3), 3), ('timm', _paced_cmd(2), 2)], limits)
    for system, steps in (('mindcoat', 3), ('timm', 2)):
        res, err, peers = out[system]
        assert err is None and peers == ['mindcoat', 'timm'], (err, peers)
        assert res['steps'] == steps and len(res['step_times_ms']) == steps


# ---- detectors ---------------------------------------------------------------------------------

DET_FIELDS = {'detector', 'mode', 'device', 'image_scale', 'images', 'detections_per_image',
              'weights', 'images_per_s', 'ms_per_image', 'ms_per_step', 'compile_s',
              'first_step_s', 'peak_rss_mb', 'steps', 'warmup', 'step_times_ms',
              'stage_ms_per_image', 'mindspore', 'threads'}
DET_STAGES = {'dense_graph', 'proposals_host', 'roi_align_host', 'heads_graph',
              'detections_host', 'paste_host', 'rest_host'}


def _shrunken_detector_yaml(tmp_path, name='coat_lite_mini_3x'):
    from test_detection_fixtures import shrunken_config

    from mindcoat.models.detection import as_yaml_dict
    path = tmp_path / 'detector.yaml'
    path.write_text(yaml.safe_dump(as_yaml_dict(shrunken_config(name)), sort_keys=False))
    return str(path)


def test_detector_on_the_official_fixture(tmp_path):
    """The shrunken fixture detector on its three photos: the pipeline the benchmark times finds
    the official code's detections (their counts), every stage is timed, and the figures add up."""
    from test_detection_fixtures import FIXTURES

    with open(os.path.join(FIXTURES, 'coat_lite_mini_3x_meta.json')) as f:
        official = json.load(f)['per_image']
    names = ['coffee', 'chelsea', 'astronaut']
    out = _bench_detector(tmp_path, '--config', _shrunken_detector_yaml(tmp_path),
                          '--ckpt_path', os.path.join(FIXTURES, 'coat_lite_mini_3x_random.pth'),
                          '--images', *[os.path.join(FIXTURES, 'images', f'{n}.png')
                                        for n in names], '--json')
    out = json.loads(out.stdout.strip().splitlines()[-1])
    assert DET_FIELDS <= set(out), DET_FIELDS - set(out)
    assert (out['detector'], out['image_scale'], out['steps']) == \
        ('mask_rcnn_coat_lite_mini_3x', [224, 128], 2)
    assert out['detections_per_image'] == [official[n]['num_dets'] for n in names]
    assert [im['input'] for im in out['images']] == [official[n]['input_shape'][2:]
                                                     for n in names]
    assert abs(out['images_per_s'] * out['ms_per_image'] / 1000.0 - 1) < 1e-6
    stages = out['stage_ms_per_image']
    assert set(stages) == DET_STAGES and all(v > 0 for v in stages.values()), stages


def test_detector_with_random_weights_detects(tmp_path):
    """Random weights with the box classifier biased: 100 detections (max_per_img) on the
    synthetic photo, reported in text."""
    res = _bench_detector(tmp_path, '--config', _shrunken_detector_yaml(tmp_path))
    lines = res.stdout.strip().splitlines()
    assert 'synthetic 640x480 -> 192x128' in lines[0] and 'per image [100]' in lines[0], lines
    assert 'images/s' in lines[1] and 'graph compile' in lines[1] and 'peak host memory' in \
        lines[1], lines
    assert lines[2].startswith('  per image: dense ') and '(host)' in lines[2], lines


def _bench_detector(tmp_path, *args):
    res = _run(tmp_path, '--detector', 'mask_rcnn_coat_lite_mini_3x', '--image_size', '224x128',
               '--steps', '2', '--warmup', '1', *args)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_detector_requests_are_one_line(tmp_path, capsys):
    from mindcoat import benchmark

    detector = ['--detector', 'mask_rcnn_coat_lite_mini_3x']
    cases = [(['--detector', 'mask_rcnn_coat_huge'], "unknown detector 'mask_rcnn_coat_huge'"),
             (detector + ['--batch_size', '4'], '--batch_size is for classifiers'),
             (detector + ['--mode', 'train'], '--mode train is for classifiers'),
             (detector + ['--image_size', '1333'], 'test scale LONGxSHORT'),
             (['--images', 'a.png'], '--images and --ckpt_path go with --detector'),
             (['--image_size', 'big'], 'multiple of 32')]
    for args, message in cases:
        assert benchmark.main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], \
            (args, lines)
