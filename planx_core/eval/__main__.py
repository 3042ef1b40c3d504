"""`python -m planx_core.eval`: the ablation table of the embedded Plan-X (see `ablations`)."""

import sys

from .ablations import main

sys.exit(main())
