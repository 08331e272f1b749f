"""``ray job submit --working-dir . -- python jobs/train.py --config configs/train.yaml --set ...``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
