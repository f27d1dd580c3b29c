import sys

from charlora.cli import main

sys.exit(main())
