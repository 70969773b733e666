"""``python -m autocls.cli``: the ``autocls`` command."""

import sys

from autocls.cli.main import main

sys.exit(main())
