"""AdamW with decay groups, the per-step LR schedule, and the weight EMA."""
from .adamw import AdamW, split_decay
from .ema import EMA
from .scheduler import SCHEDULERS, create_lr_schedule, scaled_lr

__all__ = ['AdamW', 'split_decay', 'EMA', 'SCHEDULERS', 'create_lr_schedule', 'scaled_lr']
