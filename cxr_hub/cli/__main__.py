"""``python -m cxr_hub.cli``: the same as ``python -m cxr_hub`` (the former module ``cxr_hub.cli`` ran this way)."""

import sys

from . import main

sys.exit(main())
