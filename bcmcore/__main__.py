import sys

from bcmcore.cli import main

sys.exit(main())
