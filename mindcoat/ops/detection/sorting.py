"""The order of PyTorch's CPU ``Tensor.sort(descending=True)``, ties included.

MMDetection ranks RPN scores with ``scores.sort(descending=True)`` and mmcv's NMS visits boxes in
``scores.sort(0, descending=True)`` order. On the CPU that sort is libstdc++'s ``std::sort``
(introsort, not stable) over (value, index) pairs with the comparator "a is NaN and b is not, or
a > b", so equal scores come out in an order that only that algorithm produces. Equal scores are
common in practice (saturated sigmoids, anchors over a constant padded area), and they decide
which anchors reach the top-k and which of two equal boxes NMS keeps; this module reproduces the
order exactly.

How: introsort's partition phase is run as libstdc++ does it (median of three moved to the
front, unguarded Hoare partition, heapsort when the depth limit is reached, segments of at most
16 left to the final insertion sort), each partition vectorised with NumPy. The final insertion
sort is stable and never moves an element across a partition boundary, so it equals a stable
sort of the partitioned array. Host-side NumPy: the result's order is data-dependent.
"""
import numpy as np

_THRESHOLD = 16  # libstdc++ _S_threshold: segments this small are left to the insertion sort


def _keys(values):
    """int64 keys whose '>' is the comparator's: NaN above everything, -0.0 equal to 0.0."""
    v = np.ascontiguousarray(values, dtype=np.float32).copy()
    v[v == 0] = 0.0  # -0.0 and 0.0 compare equal
    bits = v.view(np.int32).astype(np.int64)
    # IEEE order as integers: negative floats reversed
    keys = np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    keys[np.isnan(v)] = np.iinfo(np.int64).max
    return keys


class _Introsort:
    """libstdc++'s std::sort partition phase on (keys, idx), with comp(a, b) = a > b."""

    def __init__(self, keys, limit):
        self.keys = keys
        self.idx = np.arange(len(keys), dtype=np.int64)
        self.limit = limit  # only the first ``limit`` positions are needed
        self.bound = len(keys)  # positions before this are partitioned as std::sort would

    def swap(self, a, b):
        k, i = self.keys, self.idx
        k[a], k[b] = k[b], k[a]
        i[a], i[b] = i[b], i[a]

    def move_median_to_first(self, result, a, b, c):
        k = self.keys
        if k[a] > k[b]:
            if k[b] > k[c]:
                self.swap(result, b)
            elif k[a] > k[c]:
                self.swap(result, c)
            else:
                self.swap(result, a)
        elif k[a] > k[c]:
            self.swap(result, a)
        elif k[b] > k[c]:
            self.swap(result, c)
        else:
            self.swap(result, b)

    def partition(self, first, last):
        """__unguarded_partition_pivot: returns the cut. The left scan stops at the original
        elements not greater than the pivot, the right scan at those not less, until they cross;
        each pair is swapped, which is what the scalar loop does."""
        self.move_median_to_first(first, first + 1, first + (last - first) // 2, last - 1)
        k = self.keys
        pivot = k[first]
        lefts = first + 1 + np.flatnonzero(~(k[first + 1:last] > pivot))
        rights = (first + np.flatnonzero(~(pivot > k[first:last])))[::-1]
        n = min(len(lefts), len(rights))
        crossing = lefts[:n] >= rights[:n]
        m = int(np.argmax(crossing)) if crossing.any() else n
        if m:
            a, b = lefts[:m], rights[:m]
            k[a], k[b] = k[b], k[a].copy()
            self.idx[a], self.idx[b] = self.idx[b], self.idx[a].copy()
        if m == 0:
            return int(lefts[0])
        if m < len(lefts):
            return int(min(lefts[m], rights[m - 1]))
        return int(rights[m - 1])

    def run(self, first, last, depth):
        while last - first > _THRESHOLD:
            if depth == 0:
                self.heap_sort(first, last)
                return
            depth -= 1
            cut = self.partition(first, last)
            if cut < self.limit:
                self.run(cut, last, depth)
            else:
                self.bound = min(self.bound, cut)  # the rest is never looked at
            last = cut

    # std::partial_sort(first, last, last): make_heap then sort_heap, as libstdc++ writes them
    def adjust_heap(self, first, hole, length, key, index):
        k, ix = self.keys, self.idx
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if k[first + child] > k[first + child - 1]:
                child -= 1
            k[first + hole], ix[first + hole] = k[first + child], ix[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            k[first + hole], ix[first + hole] = k[first + child - 1], ix[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and k[first + parent] > key:
            k[first + hole], ix[first + hole] = k[first + parent], ix[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        k[first + hole], ix[first + hole] = key, index

    def heap_sort(self, first, last):
        k, ix = self.keys, self.idx
        length = last - first
        if length >= 2:
            parent = (length - 2) // 2
            while True:
                self.adjust_heap(first, parent, length, k[first + parent], ix[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:
            last -= 1
            key, index = k[last], ix[last]
            k[last], ix[last] = k[first], ix[first]
            self.adjust_heap(first, 0, last - first, key, index)


def torch_sort_desc(values, k=None):
    """Indices of the ``k`` largest float32 ``values`` (all when None) in the order
    ``torch.sort(values, descending=True)`` returns them on the CPU, equal values included."""
    keys = _keys(np.asarray(values).reshape(-1))
    n = len(keys)
    k = n if k is None else max(0, min(int(k), n))
    if n == 0 or k == 0:
        return np.zeros(0, np.int64)
    sorter = _Introsort(keys, k)
    if n > 1:
        sorter.run(0, n, 2 * (n.bit_length() - 1))
    head = sorter.bound
    order = np.argsort(-sorter.keys[:head], kind='stable')
    return sorter.idx[:head][order][:k]
