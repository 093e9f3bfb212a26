"""Where a job runs: the device, graph or PyNative mode, the jit level, the msrun ranks, and the
precision the device trains in. One set of rules for train, validate and the benchmark."""
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ConfigError

CPU_FLOAT32 = ('CPU: training in float32 (amp and loss scaling are for Ascend/GPU; float16 is '
               'slower on the CPU and amp O1 fails there in MindSpore 2.10)')


def python_sigint():
    """Gives Ctrl-C back to Python (KeyboardInterrupt) between steps, so a job can say what it
    saved and exit 130. MindSpore installs its own SIGINT handler while a graph runs, which
    turns Ctrl-C into a SIGTERM to the process (see catch_interrupts)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def catch_interrupts():
    """Ctrl-C during a step reaches Python as the SIGTERM MindSpore sends itself; a SIGTERM
    then ends the job as Ctrl-C does (one line saying what was saved) instead of silently."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
        python_sigint()


@contextmanager
def interrupts_held():
    """Holds Ctrl-C (SIGINT, and the SIGTERM MindSpore turns it into) until the block is done,
    then raises KeyboardInterrupt: the end-of-epoch writes finish together, so the line saying
    which checkpoint is kept is true, and no library reports a torn write of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
    if caught:
        raise KeyboardInterrupt


def launched_by_msrun():
    """msrun (or a rank table) started this process: it sets MS_ROLE / RANK_TABLE_FILE."""
    return 'MS_ROLE' in os.environ or 'RANK_TABLE_FILE' in os.environ


def msrun_workers():
    return int(os.environ.get('MS_WORKER_NUM') or 1)


def check_launcher(distribute, script='train.py'):
    """``distribute`` must match how the process was started."""
    if distribute and not launched_by_msrun():
        raise ConfigError(f"distribute is True but {script} was not started by msrun: launch it "
                          f"with msrun --worker_num N --local_worker_num N python {script} ..., or "
                          "pass --distribute False to train on one device")
    if launched_by_msrun() and not distribute and msrun_workers() > 1:
        raise ConfigError(f"started by msrun with {msrun_workers()} workers but distribute is "
                          "False: pass --distribute True (otherwise each worker trains the whole "
                          "run alone and they overwrite each other's files)")


def set_device(device_target=None, mode=0, jit_level=None, training=False):
    """Selects the device (``None``/'auto': what MindSpore finds), graph (``mode`` 0) or
    PyNative (1) mode and the jit level: ``jit_level`` when given, else for ``training`` O2 on
    Ascend and O0 elsewhere, else MindSpore's own choice. Returns the device's name."""
    import mindspore as ms
    if device_target and device_target != 'auto':
        ms.set_device(device_target)
    device = ms.get_context('device_target')
    ms.set_context(mode=ms.GRAPH_MODE if mode == 0 else ms.PYNATIVE_MODE)
    if jit_level or training:
        ms.set_context(jit_config={'jit_level': jit_level or
                                   ('O2' if device == 'Ascend' else 'O0')})
    return device


def training_amp_level(device, amp_level):
    """The precision a step trains in: ``amp_level`` on Ascend/GPU; float32 (O0) on the CPU."""
    return 'O0' if device == 'CPU' else amp_level


@dataclass
class Run:
    """This process's place in the job and its log: rank 0 prints, and copies what it printed
    to ``log_file`` once the run's folder exists."""
    rank: int = 0
    world: int = 1
    distributed: bool = False
    device: str = 'CPU'
    log_file: str = None
    early: list = field(default_factory=list)  # lines printed before the folder exists

    def log(self, *msg):
        if self.rank == 0:
            print(*msg, flush=True)
            line = ' '.join([time.strftime('%Y-%m-%d %H:%M:%S')] + [str(m) for m in msg])
            if self.log_file:
                with open(self.log_file, 'a') as f:
                    print(line, file=f)
            else:
                self.early.append(line)

    def open_log(self, path):
        self.log_file = path
        with open(path, 'a') as f:
            f.writelines(line + '\n' for line in self.early)
        self.early = []


def start(device_target=None, mode=0, jit_level=None, distribute=False, training=False):
    """Sets the device up and joins the msrun job when ``distribute``: the Run of this process."""
    run = Run(device=set_device(device_target, mode, jit_level, training))
    catch_interrupts()
    if distribute:
        import mindspore as ms
        from mindspore.communication import get_group_size, get_rank, init
        init()
        run.rank, run.world, run.distributed = get_rank(), get_group_size(), True
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True, device_num=run.world)
    return run
