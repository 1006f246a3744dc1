"""``python -m arange`` is the ``arange`` command."""

import sys

from .cli import main

sys.exit(main())
