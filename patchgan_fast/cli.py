"""``python -m patchgan_fast.cli`` (as under ``torchrun``): the ``patchgan-fast`` command, which lives in
:mod:`patchgan_fast.app.cli`."""

import sys

from .app.cli import build_parser, main

__all__ = ["main", "build_parser"]

if __name__ == "__main__":
    sys.exit(main())
