"""The recognition wing: the face recognition pipeline (detect, align, embed, search a gallery;
PaddleX's `create_pipeline`), its result objects, and the worker processes that run it on every core.
"""
