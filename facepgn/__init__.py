"""facepgn: monocular 3D face reconstruction with a Pose Guidance Network, on Ray.

Library code imports without a running Ray; Ray appears only in ``facepgn.pipelines`` and
``facepgn.train``.
"""

__version__ = "0.1.0"
