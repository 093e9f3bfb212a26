"""AdamW and Lion with decay groups, the LR schedules, and the weight EMA."""
from .adamw import AdamW, split_decay
from .clip import ClipGradNorm
from .ema import EMA, ema_initial_share
from .factory import OptimizerSettings, create_optimizer
from .lion import Lion
from .scheduler import SCHEDULERS, ScheduleSettings, create_lr_schedule, lr_schedule_for, \
    scaled_lr, timm_cosine_per_epoch, unfinished_decay

__all__ = ['AdamW', 'ClipGradNorm', 'Lion', 'split_decay', 'EMA', 'OptimizerSettings',
           'ScheduleSettings', 'create_optimizer',
           'SCHEDULERS', 'create_lr_schedule', 'lr_schedule_for', 'scaled_lr',
           'timm_cosine_per_epoch', 'ema_initial_share', 'unfinished_decay']
