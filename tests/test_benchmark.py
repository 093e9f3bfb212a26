"""`python -m mindcoat.benchmark --json` on a tiny run: the output fields (never timings)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = {'model', 'mode', 'batch_size', 'image_size', 'amp_level', 'graph_mode', 'device',
          'depthwise_kernel', 'images_per_s', 'ms_per_step', 'compile_s', 'first_step_s',
          'peak_rss_mb', 'steps', 'warmup', 'step_times_ms', 'mindspore', 'threads'}


def _start(tmp_path, mode):
    env = dict(os.environ, GLOG_v='3',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'mindcoat.benchmark', '--model', 'coat_lite_tiny', '--batch_size',
           '2', '--image_size', '64', '--mode', mode, '--steps', '2', '--warmup', '1',
           '--device', 'CPU', '--json']
    cwd = tmp_path / mode  # output to files: neither run can block on a full pipe
    cwd.mkdir()
    with open(cwd / 'stdout', 'w') as out, open(cwd / 'stderr', 'w') as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)


def _result(proc, cwd):
    proc.wait(timeout=600)
    assert proc.returncode == 0, (cwd / 'stderr').read_text()[-2000:]
    return json.loads((cwd / 'stdout').read_text().strip().splitlines()[-1])


def test_benchmark_json_fields(tmp_path):
    # both runs at once: each compiles on its own core (no timing is checked here)
    procs = {mode: _start(tmp_path, mode) for mode in ('infer', 'train')}
    for mode, proc in procs.items():
        out = _result(proc, tmp_path / mode)
        assert FIELDS <= set(out), FIELDS - set(out)
        assert (out['model'], out['mode'], out['batch_size'], out['image_size']) == \
            ('coat_lite_tiny', mode, 2, 64)
        assert out['device'] == 'CPU' and out['depthwise_kernel'] == 'custom'
        assert out['steps'] == 2 and len(out['step_times_ms']) == 2
        assert out['images_per_s'] > 0 and out['ms_per_step'] > 0 and out['compile_s'] >= 0
        assert abs(out['images_per_s'] * out['ms_per_step'] / 1000.0 - 2) < 1e-6
        assert out['peak_rss_mb'] > 100
