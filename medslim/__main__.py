import sys

from medslim.cli import main

sys.exit(main())
