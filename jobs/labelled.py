"""``ray job submit -- python jobs/labelled.py convert --data s3://.../300W_LP --out s3://.../records/300w-lp --config configs/labelled.yaml``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["labelled", *sys.argv[1:]]))
