"""``ray job submit --working-dir . -- python jobs/tune.py --config configs/tune-loss-weights.yaml --set ...``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
