"""The serving wing: the pipeline as an HTTP service with PaddleX's API (envelope, endpoints,
request schemas, image decoding) and its web page.
"""
