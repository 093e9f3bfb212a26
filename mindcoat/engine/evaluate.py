"""Evaluation: loss, Acc@1 and Acc@5 over a split, the one implementation used by the trainer
and validate.py.

Ties are broken by class index (a stable sort: of equal logits the lower index ranks first), and a
row with any non-finite logit is never a hit, so a diverged model scores 0%, not 100%. Under
msrun each rank counts its own shard and the float64 sums travel bit-exactly between the ranks,
so the totals equal a single-device pass over the same images.
"""
import numpy as np

from .context import python_sigint

FIELDS = ('loss_sum', 'top1', 'top5', 'num', 'skipped')


class EvalCounts:
    """Running sums whose totals over shards equal the totals of one pass over all images."""

    def __init__(self):
        self.values = np.zeros(len(FIELDS), np.float64)

    def add(self, logits, labels):
        """``logits`` (N, C), ``labels`` (N,) class indices."""
        logits = np.asarray(logits, np.float64)
        labels = np.asarray(labels, np.int64)
        rows = np.arange(len(labels))
        finite = np.isfinite(logits).all(axis=1)
        with np.errstate(invalid='ignore', over='ignore'):  # NaN/inf rows: NaN loss, no hit
            z = logits - logits.max(axis=1, keepdims=True)
            log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
        hit1 = (top[:, 0] == labels) & finite
        hit5 = (top == labels[:, None]).any(axis=1) & finite
        self.values[:4] += (-log_probs[rows, labels].sum(), hit1.sum(), hit5.sum(), len(labels))

    def summary(self):
        loss_sum, top1, top5, num, skipped = self.values
        if not num:
            return dict(loss=float('nan'), top1=float('nan'), top5=float('nan'), num_images=0,
                        skipped_images=int(skipped))
        return dict(loss=float(loss_sum / num), top1=float(100.0 * top1 / num),
                    top5=float(100.0 * top5 / num), num_images=int(num),
                    skipped_images=int(skipped))


def count_batches(network, batches, batch_size, counts=None):
    """Feeds (images, labels) numpy batches through ``network``; a short last batch is padded to
    ``batch_size`` so graph mode compiles a single input shape. Labels may be one-hot."""
    import mindspore as ms
    counts = counts or EvalCounts()
    network.set_train(False)
    for images, labels in batches:
        n = len(images)
        if n < batch_size:
            images = np.concatenate(
                [images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
        logits = network(ms.Tensor(images)).asnumpy()[:n]
        python_sigint()
        labels = np.asarray(labels)
        labels = labels.argmax(axis=1) if labels.ndim == 2 else labels.astype(np.int64)
        counts.add(logits, labels)
    return counts


def all_reduce_sum(values, world):
    """Sums a float64 vector over the msrun ranks, exactly: each rank's float64 bits travel as
    int32 through an AllGather (MindSpore 2.10's CPU collectives take no float64, float32 would
    round the loss sum, and int64 AllGather came back garbled) and are added here in rank order.
    A graph-mode Cell: the CPU has no PyNative collective kernels."""
    import mindspore as ms
    from mindspore import nn, ops

    class Gather(nn.Cell):
        def __init__(self):
            super().__init__()
            self.gather = ops.AllGather()

        def construct(self, x):
            return self.gather(x)

    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int32)
    with_mode = ms.get_context('mode')
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        gathered = Gather()(ms.Tensor(bits)).asnumpy()
    finally:
        ms.set_context(mode=with_mode)
    return np.ascontiguousarray(gathered).view(np.float64).reshape(world, -1).sum(axis=0)


def evaluate(network, loader, world=1):
    """Loss (plain cross entropy), Acc@1 and Acc@5 (%) of ``network`` over a data Loader's split
    (``mindcoat.data.create_loader(..., is_training=False)``), summed over ``world`` ranks.
    Returns (summary dict: loss, top1, top5, num_images, skipped_images; the unreadable files
    this rank skipped)."""
    counts = count_batches(network, loader.loader.create_tuple_iterator(
        num_epochs=1, output_numpy=True), loader.batch_size)
    skipped = loader.bad_images.take()
    counts.values[4] = len(skipped)
    if world > 1:
        counts.values = all_reduce_sum(counts.values, world)
    return counts.summary(), skipped
