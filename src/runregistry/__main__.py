"""``python -m runregistry``: the same as the ``runregistry`` command."""

import sys

from .cli import main

sys.exit(main())
