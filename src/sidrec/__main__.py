"""`python -m sidrec ...`, the `sidrec` command; also how torchrun starts each process:

    torchrun --standalone --nproc-per-node=2 -m sidrec train RUN_DIR --model tiger
"""

import sys

from sidrec.cli import main

if __name__ == "__main__":
    sys.exit(main())
