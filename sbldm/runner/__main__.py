"""``python -m sbldm.runner --scale smoke``: run the numbered notebooks (see ``reproduce``)."""

import sys

from sbldm.runner.reproduce import main

sys.exit(main())
