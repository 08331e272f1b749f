"""``ray job submit -- python jobs/label.py --input s3://... --output s3://... --config configs/label.yaml``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
