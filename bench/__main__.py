"""`python -m bench`: the same as `python -m bench.bench`."""

import sys

from bench.bench import main

if __name__ == "__main__":
    sys.exit(main())
