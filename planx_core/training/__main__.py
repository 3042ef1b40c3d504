"""`python -m planx_core.training --stage ...`: the same as `python -m planx_core train --stage ...`."""

import sys

from .main import main

sys.exit(main())
