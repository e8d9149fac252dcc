"""``python -m broker`` is the ``a2a-broker`` command."""

import sys

from broker.cli import main

sys.exit(main())
