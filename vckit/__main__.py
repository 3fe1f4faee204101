"""``python -m vckit ...`` is the ``vckit`` command (also what ``torchrun -m vckit`` runs)."""

import sys

from vckit.cli import main

sys.exit(main())
