from setuptools import find_packages, setup

setup(
    name='mindcoat',
    version='0.1.0',
    description='CoaT (Co-Scale Conv-Attentional Image Transformers) for MindSpore',
    packages=find_packages(include=['mindcoat', 'mindcoat.*']),
    # every file of csrc/ (sources and the headers they include): the kernels are compiled on
    # the user's machine, and a missing file silently sends every op to the slow native path
    package_data={'mindcoat': ['ops/csrc/*', 'ops/csrc/**/*', 'data/*.txt']},
    python_requires='>=3.9',
    # MindSpore 2.10's compiled ops fail under numpy 2 the first time an eager op meets a scalar.
    install_requires=['mindspore==2.10.0', 'numpy<2', 'pyyaml', 'pillow', 'tqdm'],
    extras_require={'test': ['pytest', 'pytest-xdist', 'safetensors'], 'plot': ['matplotlib']},
)
