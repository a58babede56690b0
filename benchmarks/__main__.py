"""Entry point of ``python -m benchmarks`` (``make bench``)."""

import sys

from benchmarks.suite import main

sys.exit(main())
