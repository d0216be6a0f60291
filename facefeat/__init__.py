"""facefeat's public Python API, PaddleX's names:

    from facefeat import create_model, create_pipeline

create_model: a face feature predictor (engine.inference.predictor); create_pipeline: the face
recognition pipeline (engine.recognition.pipeline). `from engine import ...` gives the same two.
Neither loads Paddle until it is called.
"""
from engine import create_model, create_pipeline

__all__ = ["create_model", "create_pipeline"]
