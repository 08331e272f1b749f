"""``ray job submit -- python jobs/infer.py --model s3://.../model.pt --input s3://... --output s3://... --config configs/infer.yaml``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
