import sys

from rokv.cli import main

sys.exit(main())
