"""Image decoding that never stops an epoch: a corrupt or unreadable file is skipped, counted,
and reported by path at the end of the epoch.

Hand-written because mindspore.dataset's C++ Decode aborts the pipeline on a bad file, and its
ErrorSamplesMode.SKIP neither names the file nor (as measured in 2.10) reliably keeps the next one.
ImageFolderDataset does not output paths either, so a failed sample carries the SHA-1 of its
bytes and its label; the path is found afterwards in that class's folder (failures are rare).
"""
import hashlib
import io
import os
import threading

import numpy as np
from PIL import Image

NO_DIGEST = np.zeros(20, np.uint8)


class SafeDecode:
    """bytes -> (HWC uint8 image, ok, sha1 of the bytes if not ok). Picklable (worker processes)."""

    def __init__(self, channels=3):
        self.mode = 'RGB' if channels == 3 else 'L'
        self.channels = channels

    def __call__(self, data):
        raw = data.tobytes()
        try:
            with Image.open(io.BytesIO(raw)) as img:
                arr = np.asarray(img.convert(self.mode))
            if arr.ndim == 2:
                arr = arr[:, :, None]
            return arr, np.array(True), NO_DIGEST
        except Exception:  # any decoder error means: skip this file
            digest = np.frombuffer(hashlib.sha1(raw).digest(), np.uint8)
            return np.zeros((32, 32, self.channels), np.uint8), np.array(False), digest


class BadImageLog:
    """The filter predicate after SafeDecode: keeps good rows, records bad ones (label, digest).
    Runs in the main process (dataset filter threads), so the records are visible to the loop."""

    def __init__(self, split_dir, classes):
        self.split_dir = split_dir
        self.classes = classes
        self.records = []
        self._lock = threading.Lock()

    def __call__(self, ok, digest, label):
        if bool(ok):
            return True
        with self._lock:
            self.records.append((int(label), bytes(digest)))
        return False

    def take(self):
        """Paths of the files skipped since the last call, each once, in the order met."""
        with self._lock:
            records, self.records = self.records, []
        return list(dict.fromkeys(self._find(label, digest) for label, digest in records))

    def _find(self, label, digest):
        folder = os.path.join(self.split_dir, self.classes[label])
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            try:
                with open(path, 'rb') as f:
                    if hashlib.sha1(f.read()).digest() == digest:
                        return path
            except OSError:
                return path  # unreadable: the file that failed
        return f"{folder}/<file with sha1 {digest.hex()}>"
