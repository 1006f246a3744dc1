"""Builds the optional native hash kernel (arange/hashing/_pillow.c); everything else is in
pyproject.toml. Without a C compiler the build is skipped and the torch code runs instead."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "arange.hashing._pillow",
            ["arange/hashing/_pillow.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
