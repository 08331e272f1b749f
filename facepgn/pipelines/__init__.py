"""Ray Data pipelines (preprocess, inference). The only package besides facepgn.train that imports Ray."""
