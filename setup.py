"""Builds keyshard's optional compiled accelerators, `keyshard._speedups` and
`keyshard._netfast` (the net layer's hot loops), with Cython.

Everything else is in pyproject.toml. The extension is optional: keyshard installs and runs
its pure-Python code (the reference) when
  - Cython is missing (an install with --no-build-isolation into an environment without it),
  - no C compiler works with this Python's headers (probed first: a missing compiler makes
    some setuptools versions fail the whole build even for an `optional=True` extension),
  - or the extension fails to compile anyway (`optional=True`: a warning, not an error).
KEYSHARD_BUILD_EXTENSIONS=0 skips it on purpose.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile

from setuptools import Extension, setup


def _say(text: str) -> None:
    print(f"keyshard: {text}", flush=True)


def compiler_works() -> bool:
    """Whether the configured C compiler can compile against Python.h."""
    try:
        from distutils.ccompiler import new_compiler  # setuptools' copy of distutils
        from distutils.sysconfig import customize_compiler

        compiler = new_compiler()
        customize_compiler(compiler)
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("#include <Python.h>\nint keyshard_probe(void) { return 0; }\n")
            compiler.compile([src], output_dir=tmp,
                             include_dirs=[sysconfig.get_paths()["include"]])
    except Exception as exc:  # noqa: BLE001 - any failure means: no compiled twins
        _say(f"no working C compiler ({exc}); installing the pure-Python code only")
        return False
    return True


def extensions() -> list[Extension]:
    if os.environ.get("KEYSHARD_BUILD_EXTENSIONS", "1") == "0":
        _say("KEYSHARD_BUILD_EXTENSIONS=0: installing the pure-Python code only")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not installed; installing the pure-Python code only")
        return []
    if not compiler_works():
        return []
    exts = [Extension("keyshard._speedups", ["src/keyshard/_speedups.pyx"], optional=True),
            Extension("keyshard._netfast", ["src/keyshard/_netfast.pyx"], optional=True)]
    return cythonize(exts, language_level=3, quiet=True, include_path=["src"])


setup(ext_modules=extensions())
