"""facefeat's engine: the command line (cli), the runners of its modes (runners/) and the wings they
share: config, training, evaluation, inference, gallery, recognition, serving. The Python API is
`create_model` and `create_pipeline`, also importable as `from facefeat import ...`.

The package itself stays free of Paddle, so that the command line can reject a bad config before
Paddle loads: the two API functions import their wing when called.
"""


def create_model(model_name=None, model_dir=None, **kwargs):
    """A face feature predictor, PaddleX's `create_model` (see engine.inference.predictor)."""
    from engine.inference.predictor import create_model as _create_model

    return _create_model(model_name, model_dir=model_dir, **kwargs)


def create_pipeline(pipeline="face_recognition", device=None, config=None, use_hpip=None, hpi_config=None,
                    pp_option=None):
    """The face recognition pipeline, PaddleX's `create_pipeline` (see engine.recognition.pipeline)."""
    from engine.recognition.pipeline import create_pipeline as _create_pipeline

    return _create_pipeline(pipeline, device=device, config=config, use_hpip=use_hpip, hpi_config=hpi_config,
                            pp_option=pp_option)
