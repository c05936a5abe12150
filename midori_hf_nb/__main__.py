"""``python -m midori_hf_nb``: see :mod:`midori_hf_nb.cli`."""

import sys

from .cli import main

sys.exit(main())
