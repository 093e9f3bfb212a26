"""python validate.py ...: the same command as ``python -m mindcoat.validate`` /
``mindcoat-validate``."""
import sys

from mindcoat.validate import main

if __name__ == '__main__':
    sys.exit(main())
