"""Build of the optional C extension ``pipeline._fastpath`` (everything else is in pyproject.toml).

The extension is built when a C compiler is there, linked to OpenSSL's libcrypto for
SHA-256 when its headers are there too (else it hashes through Python's hashlib). When no
compiler works, the build says so in one line and carries on: the package installs and
runs on the pure Python path (``pipeline/fastpath.py`` logs which path runs at start).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NOTE = "auditlog: the C extension pipeline._fastpath"


class OptionalBuildExt(build_ext):
    """Builds the extension with OpenSSL, else without, else not at all (one clear line)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (setuptools raises before compiling)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        with_openssl = (ext.define_macros or []) + [("AUDIT_WITH_OPENSSL", "1")]
        plain = list(ext.define_macros or [])
        try:
            ext.define_macros, ext.libraries = with_openssl, [*ext.libraries, "crypto"]
            super().build_extension(ext)
            return
        except Exception as exc:
            print(f"{NOTE}: building without OpenSSL ({type(exc).__name__}: {exc}); "
                  "SHA-256 through hashlib", file=sys.stderr)  # fmt: skip
        ext.define_macros, ext.libraries = plain, [lib for lib in ext.libraries if lib != "crypto"]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"{NOTE} was NOT built ({type(exc).__name__}: {exc}); the service runs on the "
              "pure Python path (slower); install a C compiler and Python headers and "
              "reinstall to build it", file=sys.stderr)  # fmt: skip


setup(
    ext_modules=[
        Extension(
            "pipeline._fastpath",
            sources=["pipeline/_fastpath.c"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
