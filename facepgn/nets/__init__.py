"""The two networks of facepgn: the Pose Guidance Network (``pgn``) and the coefficient regressor
(``regressor``), built from the plain-torch blocks in ``blocks``."""
