"""Which images each rank reads in an epoch.

The permutation depends only on (seed, epoch), so every rank agrees on it and a resumed run reads
the same order. With repeated augmentation (DeiT's RASampler) each image of the permutation is
repeated before dealing round-robin to the ranks, so its copies land on different ranks.
"""
import numpy as np


def epoch_permutation(num_samples, seed, epoch, shuffle=True):
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def rank_indices(num_samples, num_replicas=1, rank=0, repeats=1, seed=0, epoch=0, shuffle=True,
                 limit=None):
    """The indices rank ``rank`` reads. With ``repeats`` > 1 each image of the permutation is
    repeated that many times before dealing round-robin to the ranks, so its copies land on
    different ranks (different augmentations); each rank keeps num_samples // num_replicas, so
    an epoch has as many steps as without repeats (as DeiT's RASampler). ``limit`` (MindCV's
    num_samples, per rank as its DistributedSampler counts it): only the first ``limit`` of the
    rank's indices, so each epoch reads another subset, drawn from (seed, epoch)."""
    order = epoch_permutation(num_samples, seed, epoch, shuffle)
    if repeats > 1:
        order = np.repeat(order, repeats)
    per_rank = num_samples // num_replicas
    if limit is not None:
        per_rank = min(per_rank, limit)
    return order[rank::num_replicas][:per_rank].tolist()
