"""``python -m perfwatch.worker``: kept at this path because other code runs it by name.

Paired mode starts the worker of the *baseline's* checkout by this module path, so a
baseline from before the package moved to ``perfwatch/bench/`` and one from after both
answer to it. The worker itself is :mod:`perfwatch.bench.worker`.
"""

import sys

from perfwatch.bench.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
