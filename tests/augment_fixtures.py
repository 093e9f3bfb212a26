"""The timm/torchvision fixtures shared by test_augment.py and test_transforms.py: real photos
and the reference outputs tools/make_augment_fixtures.py recorded for them."""
import os

import numpy as np
from PIL import Image

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'augment')


def load_reference():
    return np.load(os.path.join(FIXTURES, 'reference.npz'))


def photo(name):
    """A committed photo as an RGB PIL image."""
    with Image.open(os.path.join(FIXTURES, 'photos', name)) as img:
        return img.convert('RGB')
