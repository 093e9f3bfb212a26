import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
COMMANDS = ('train', 'validate', 'predict', 'detect', 'export', 'convert', 'benchmark', 'demo',
            'plot')


class BuildWithConfigs(build_py):
    """The wheel carries configs/ as mindcoat/configs/, so that an installed mindcoat trains the
    shipped recipes and the demo without a checkout (mindcoat.config.find_config looks there)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, 'mindcoat', 'configs')
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, 'configs'), target,
                        ignore=shutil.ignore_patterns('*.pyc', '__pycache__'))


setup(
    name='mindcoat',
    version='0.1.0',
    description='CoaT (Co-Scale Conv-Attentional Image Transformers) for MindSpore',
    packages=find_packages(include=['mindcoat', 'mindcoat.*']),
    # every file of csrc/ (sources and the headers they include): the kernels are compiled on
    # the user's machine, and a missing file silently sends every op to the slow native path
    package_data={'mindcoat': ['ops/csrc/*', 'ops/csrc/**/*', 'data/*.txt']},
    cmdclass={'build_py': BuildWithConfigs},
    entry_points={'console_scripts': [f'mindcoat-{name} = mindcoat.{name}:main'
                                      for name in COMMANDS]},
    python_requires='>=3.9',
    # MindSpore 2.10's compiled ops fail under numpy 2 the first time an eager op meets a scalar.
    install_requires=['mindspore==2.10.0', 'numpy<2', 'pyyaml', 'pillow', 'tqdm'],
    extras_require={'test': ['pytest', 'pytest-xdist', 'safetensors', 'pycocotools', 'onnx',
                             'onnxruntime'],
                    'plot': ['matplotlib'], 'det': ['pycocotools'],
                    'onnx': ['onnx', 'onnxruntime']},
)
