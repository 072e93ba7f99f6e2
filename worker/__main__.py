import sys

from rokv.worker.main import main

sys.exit(main())
