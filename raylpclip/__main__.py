import sys

from raylpclip.cli import main

sys.exit(main())
