# setuptools needs setup.py only for `cffi_modules`, which pyproject.toml cannot
# express; all other metadata lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/_atomics_build.py:ffibuilder"])
