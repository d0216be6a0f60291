"""The recognition wing: the face recognition pipeline (detect, align, embed, search a gallery;
PaddleX's `create_pipeline`) and its result objects.
"""
