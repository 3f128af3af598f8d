"""``python -m bench``: run the benchmark harness; ``--help`` lists its options."""

from __future__ import annotations

from .harness import main

raise SystemExit(main())
