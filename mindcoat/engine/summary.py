"""A run's per-epoch figures as MindSpore summary data (train.py's --summary)."""
import os


class EpochSummary:
    """--summary: the epoch's train loss, lr and validation figures as MindSpore SummaryRecord
    scalars (step = epoch) in ``folder``/summary/, what MindInsight and MindCV users read.
    ``folder`` None: off."""
    KEYS = ('train_loss', 'lr', 'val_loss', 'val_top1', 'val_top5', 'ema_val_top1',
            'ema_val_top5')

    def __init__(self, folder, log):
        self.record = None
        if folder:
            from mindspore import SummaryRecord
            path = os.path.join(folder, 'summary')
            self.record = SummaryRecord(path, num_process=1)  # one writer process is plenty
            log(f'summary data: {path}')

    def write(self, record):
        if self.record is None:
            return
        import mindspore as ms
        import numpy as np
        for key in self.KEYS:
            if key in record:
                self.record.add_value('scalar', key, ms.Tensor(np.float32(record[key])))
        self.record.record(record['epoch'])
        self.record.flush()  # an epoch's figures are on disk before its checkpoint

    def close(self):
        if self.record is not None:
            self.record.close()
