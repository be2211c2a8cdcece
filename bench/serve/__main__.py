"""python -m bench.serve: the same as bench-serve-eval."""
import sys

from bench.serve.cli import main

sys.exit(main())
