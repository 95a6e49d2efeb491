"""`python -m server.plan --preset NAME --gpus 2x24GiB`: see server/model/plan.py."""

import sys

from server.model.plan import main

if __name__ == "__main__":
    sys.exit(main())
