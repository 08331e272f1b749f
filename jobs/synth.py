"""``ray job submit -- python jobs/synth.py faces --n 100000 --out s3://.../records/synthetic --config configs/synth-faces.yaml``
(or ``videos``): chunks of faces (clips) as Ray tasks over the cluster (``executor: ray``)."""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
