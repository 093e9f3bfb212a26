"""AdamW with decay groups, the LR schedules, and the weight EMA."""
from .adamw import AdamW, split_decay
from .ema import EMA
from .scheduler import SCHEDULERS, create_lr_schedule, lr_schedule_for, scaled_lr, \
    timm_cosine_per_epoch

__all__ = ['AdamW', 'split_decay', 'EMA', 'SCHEDULERS', 'create_lr_schedule', 'lr_schedule_for',
           'scaled_lr', 'timm_cosine_per_epoch']
