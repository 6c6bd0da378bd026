"""``python -m trashsorter_edge``: the same as ``trashsorter-edge``."""

from trashsorter_edge.cli import main

raise SystemExit(main())
