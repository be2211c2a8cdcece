"""`python -m bench.report RESULTS_DIR [--out DIR]`: the same as `bench-report`."""
import sys

from bench.report.build import main

sys.exit(main())
