import sys

from rokv.broker.main import main

sys.exit(main())
