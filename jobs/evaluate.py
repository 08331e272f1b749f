"""As a Ray job::

    ray job submit -- python jobs/evaluate.py aflw2000 --model s3://.../model.pt --data s3://.../AFLW2000 \
        --out s3://.../eval --config configs/evaluate.yaml
"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
