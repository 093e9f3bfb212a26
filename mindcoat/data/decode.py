"""Image files in, PIL images out; an unreadable file is skipped and reported by its path.

mindspore.dataset's C++ Decode aborts the pipeline on a bad file and its ErrorSamplesMode.SKIP
neither names the file nor (in 2.10) reliably keeps the next one, so decoding is done
with PIL in the dataset source: a file that fails yields a row flagged not-ok carrying its
position, and ``BadImageLog`` (the filter after the source) drops it and records the path.
"""
import os
import threading

import numpy as np
from PIL import Image


_LISTINGS = {}


def list_images(split_dir, classes):
    """Samples: (path, label) of the regular files in each class folder, classes in the given
    order and files sorted by name (hidden files, folders, FIFOs and sockets are left out).
    Cached while no class folder changes (a loader is built every epoch; ImageNet has 1.28M
    files)."""
    key = (os.path.abspath(split_dir), tuple(classes))
    stamp = tuple(_mtime(os.path.join(split_dir, c)) for c in classes)
    if _LISTINGS.get(key, (None,))[0] != stamp:
        _LISTINGS[key] = (stamp, _scan(split_dir, classes))
    return _LISTINGS[key][1]


def _mtime(folder):
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return None


class Samples:
    """(path, label) pairs held as two numpy arrays: one buffer each, so that worker processes
    get them without pickling or copy-on-write of a million Python objects."""

    def __init__(self, pairs):
        self.paths = np.array([os.fsencode(p) for p, _ in pairs], dtype=bytes)
        self.labels = np.array([label for _, label in pairs], dtype=np.int32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return os.fsdecode(self.paths[index]), int(self.labels[index])


def _scan(split_dir, classes):
    pairs = []
    for label, name in enumerate(classes):
        folder = os.path.join(split_dir, name)
        if not os.path.isdir(folder):
            continue
        files = sorted(e.name for e in os.scandir(folder)
                       if not e.name.startswith('.') and e.is_file())
        pairs += [(os.path.join(folder, f), label) for f in files]
    return Samples(pairs)


def read_image(path, channels=3):
    """A decoded RGB (or, for one channel, L) PIL image; any decoder error propagates."""
    with Image.open(path) as img:
        return img.convert('L' if channels == 1 else 'RGB')


class BadImageLog:
    """The filter predicate after the source: keeps good rows, records the paths of bad ones.
    ``path_of(position)`` maps a row's position to its file. Runs in the main process (dataset
    filter threads), so the records are visible to the loop."""

    def __init__(self, path_of):
        self.path_of = path_of
        self.paths = []
        self._lock = threading.Lock()

    def __call__(self, ok, position):
        if bool(ok):
            return True
        with self._lock:
            self.paths.append(self.path_of(int(position)))
        return False

    def take(self):
        """Paths of the files skipped since the last call, each once, in the order met."""
        with self._lock:
            paths, self.paths = self.paths, []
        return list(dict.fromkeys(paths))
