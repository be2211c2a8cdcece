"""`python -m bench.protocol ...`: the same as `bench-protocol ...`."""
import sys

from bench.protocol.cli import main

sys.exit(main())
