"""Seeds of a data-parallel run: the same initial weights on every rank, then each rank its own
random stream (the official main.py seeds seed + rank), so the ranks draw different drop-path
and dropout masks instead of dropping the same residual branches of their different images."""
import mindspore as ms


def build_seeded(build, seed, rank=0):
    """``build()`` under ``seed`` (identical weights on every rank); the global seed is then
    ``seed + rank`` for everything random that follows (masks drawn in the compiled step).
    Rank 0 of a distributed run therefore draws what a single-device run draws."""
    ms.set_seed(seed)
    model = build()
    ms.set_seed(seed + rank)
    return model
