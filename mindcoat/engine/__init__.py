"""The training engine: the compiled step, the epoch loop, evaluation, checkpoints, the run's
folder, seeding, summary data."""
from .checkpoint import load_training_state, save_checkpoint, training_state
from .evaluate import EvalCounts, all_reduce_sum, count_batches, evaluate
from .loop import EpochShort, sink_supported, train_one_epoch
from .run_dir import CheckpointKeeper, EpochLog, check_run_dir, prepare_run_dir
from .seeding import build_seeded
from .summary import EpochSummary
from .train_step import SoftTargetCrossEntropy, StepCounters, TrainStep, create_loss_scaler, \
    create_train_step

__all__ = ['CheckpointKeeper', 'load_training_state', 'save_checkpoint', 'training_state',
           'EvalCounts', 'all_reduce_sum', 'count_batches', 'evaluate', 'EpochShort',
           'sink_supported', 'train_one_epoch', 'EpochLog', 'EpochSummary', 'check_run_dir',
           'prepare_run_dir', 'build_seeded', 'SoftTargetCrossEntropy', 'StepCounters',
           'TrainStep', 'create_loss_scaler', 'create_train_step']
