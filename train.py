"""python train.py ...: the same command as ``python -m mindcoat.train`` / ``mindcoat-train``."""
import sys

from mindcoat.train import main

if __name__ == '__main__':
    sys.exit(main())
