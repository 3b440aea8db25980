"""``python -m vlprompt.cli`` (and ``torchrun -m vlprompt.cli``)."""

import sys

from . import main

sys.exit(main())
