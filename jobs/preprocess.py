"""``ray job submit -- python jobs/preprocess.py --input s3://... --output s3://... --config configs/preprocess.yaml``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
