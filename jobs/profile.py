"""``ray job submit -- python jobs/profile.py --input s3://.../labels --output s3://.../profiled --views 4 --config configs/profile.yaml``"""

import sys

from facepgn.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
