"""``ray job submit -- python jobs/labelled.py convert --data s3://.../300W_LP --out s3://.../records/300w-lp --config configs/labelled.yaml``:
chunks of ``shard_size`` images as Ray tasks over the cluster (``executor: ray``)."""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["labelled", *sys.argv[1:]]))
