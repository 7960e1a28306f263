"""`python -m specvlm "prompt"`: the `specvlm` command line run as a module (the code is in `specvlm.cli`)."""

import sys

from .cli import main

sys.exit(main())
