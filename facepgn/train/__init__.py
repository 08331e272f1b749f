"""Training: the one optimisation step, the plain loop, data conversion, and the Ray trainer."""
