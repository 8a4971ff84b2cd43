"""``python -m costmeter.cli``: the ``bench`` command without the console script."""
import sys

from costmeter.cli import main

sys.exit(main())
