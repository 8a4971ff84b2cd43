"""``python -m costmeter.cli``: the same as the ``bench`` console script."""
import sys

from costmeter.cli import main

sys.exit(main())
