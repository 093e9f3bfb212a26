"""Which images each rank reads in an epoch.

``RepeatAugSampler`` is a mindspore.dataset user sampler (hand-written: MindSpore has no repeated-
augmentation sampler, and its DistributedSampler draws its shuffle from the global dataset seed,
which here must differ per rank for augmentation but the permutation must not). The permutation
depends only on (seed, epoch), so every rank agrees on it and a resumed run reads the same order.
"""
import numpy as np
import mindspore.dataset as ds


def epoch_permutation(num_samples, seed, epoch, shuffle=True):
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def rank_indices(num_samples, num_replicas=1, rank=0, repeats=1, seed=0, epoch=0, shuffle=True):
    """The indices rank ``rank`` reads. With ``repeats`` > 1 each image of the permutation is
    repeated that many times before dealing round-robin to the ranks, so its copies land on
    different ranks (different augmentations); each rank keeps num_samples // num_replicas, so
    an epoch has as many steps as without repeats (as DeiT's RASampler)."""
    order = epoch_permutation(num_samples, seed, epoch, shuffle)
    if repeats > 1:
        order = np.repeat(order, repeats)
    per_rank = num_samples // num_replicas
    return order[rank::num_replicas][:per_rank].tolist()


class RepeatAugSampler(ds.Sampler):
    """Shuffled, sharded and (optionally) repeated-augmentation sampling for one epoch."""

    def __init__(self, num_samples, num_replicas=1, rank=0, repeats=1, seed=0, epoch=0,
                 shuffle=True):
        self.indices = rank_indices(num_samples, num_replicas, rank, max(repeats, 1), seed,
                                    epoch, shuffle)
        super().__init__(num_samples=len(self.indices))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def eval_shard(num_samples, num_replicas=1, rank=0):
    """Evaluation shard: every image exactly once over all ranks (no padding), so counts summed
    over the ranks equal a single-device run."""
    return ds.SubsetSampler(list(range(rank, num_samples, num_replicas)))
