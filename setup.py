"""Packaging for nnlite: a from-scratch neural-network engine in NumPy."""

from setuptools import find_packages, setup

setup(
    name="nnlite",
    version="0.1.0",
    description="Dense neural networks with hand-written backprop and a Keras-compatible API",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["nnlite", "nnlite.*"]),
    package_data={"nnlite.datasets": ["data/*.gz", "data/SHA256SUMS"]},
    include_package_data=True,
    install_requires=["numpy>=1.24", "numba>=0.59", "scipy>=1.10", "threadpoolctl>=3.1"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "matplotlib>=3.5", "tensorflow-cpu>=2.16"],
        "plot": ["matplotlib>=3.5"],
        "gpu": ["cupy-cuda12x"],
        "bench": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["nnlite=nnlite.cli:main"]},
)
