"""fla_mm: flash-linear-attention token mixers as OpenMMLab backbones."""
from setuptools import find_packages, setup

setup(
    name='fla_mm',
    version='0.1.0',
    description='Linear-attention (FLA) vision backbones for mmsegmentation and mmdetection',
    packages=find_packages(include=['fla_mm', 'fla_mm.*']),
    # FLA kernel configs measured per GPU model (fla_mm/ops/fla_configs.py)
    package_data={'fla_mm': ['fla_configs/*/*.json']},
    python_requires='>=3.10',
    # Floors, not pins: the core runs on torch >= 2.7 and Triton >= 3.3 (what FLA 0.6.0 asks
    # for) and installs into an environment that already has them without replacing them.
    # The tested set is requirements/constraints.txt, which tools/install.sh and CI use.
    # mmcv is built by tools/install.sh because it needs the installed torch at build time.
    install_requires=[
        'torch>=2.7',
        'triton>=3.3',  # FLA imports it even on CPU
        'mmengine>=0.10.0',
        'numpy',
        'opencv-python',
        'safetensors',
        'fla-core>=0.6.0',
        'flash-linear-attention>=0.6.0',
    ],
    extras_require={
        'mm': ['mmcv>=2.1.0,<2.2.0', 'mmsegmentation>=1.2.2', 'mmdet>=3.3.0', 'ftfy', 'regex',
               'pycocotools', 'matplotlib'],
        'tests': ['pytest'],
        # tools/export.py: torch.onnx's dynamo exporter (onnxscript) and the ONNX Runtime
        # check; floors are the versions tested with torch 2.13.0
        'export': ['onnx>=1.23.2', 'onnxruntime>=1.32.0', 'onnxscript>=0.7.2'],
    },
)
