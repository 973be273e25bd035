import sys

from active_series.cli import main

sys.exit(main())
