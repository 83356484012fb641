import sys

from sandbox.zeyi.cli import main

sys.exit(main())
