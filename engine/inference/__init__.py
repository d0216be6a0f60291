"""The inference wing: an exported inference folder (read, write, convert), the one inference model
over it with Paddle, ONNX Runtime or OpenVINO behind it, official models, input expansion, the
face feature predictor (`create_model`) and its result objects.
"""
