import sys

from bench.dashboard.cli import main

sys.exit(main())
