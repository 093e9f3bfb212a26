"""AdamW and Lion with decay groups, the LR schedules, and the weight EMA."""
from .adamw import AdamW, split_decay
from .clip import ClipGradNorm
from .ema import EMA
from .factory import OptimizerSettings, create_optimizer
from .lion import Lion
from .scheduler import SCHEDULERS, ScheduleSettings, create_lr_schedule, lr_schedule_for, \
    scaled_lr, timm_cosine_per_epoch

__all__ = ['AdamW', 'ClipGradNorm', 'Lion', 'split_decay', 'EMA', 'OptimizerSettings',
           'ScheduleSettings', 'create_optimizer',
           'SCHEDULERS', 'create_lr_schedule', 'lr_schedule_for', 'scaled_lr',
           'timm_cosine_per_epoch']
