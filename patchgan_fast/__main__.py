"""``python -m patchgan_fast``: the ``patchgan-fast`` command."""

import sys

from .app.cli import main

sys.exit(main())
