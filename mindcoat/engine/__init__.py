"""The training engine: the compiled step, the epoch loop, checkpoints."""
from .checkpoint import CheckpointKeeper, ResumeError, load_training_state, save_checkpoint
from .loop import evaluate, train_one_epoch
from .train_step import SoftTargetCrossEntropy, TrainStep, create_loss_scaler

__all__ = ['CheckpointKeeper', 'ResumeError', 'load_training_state', 'save_checkpoint',
           'evaluate', 'train_one_epoch', 'SoftTargetCrossEntropy', 'TrainStep',
           'create_loss_scaler']
