import sys

from rokv.gateway.server import main

sys.exit(main())
