"""The optional C fast path of prepare (recipe/prepare/_native.c); everything else is in
pyproject.toml. Without a C compiler the build skips it and prepare runs in Python."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("recipe.prepare._native", ["recipe/prepare/_native.c"],
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                             optional=True)])
