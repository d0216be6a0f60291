"""The request bodies of the service's endpoints: PaddleX's serving schemas for face recognition."""
from typing import List, Optional

from pydantic import BaseModel


class ImageLabelPair(BaseModel):
    image: str
    label: str


class BuildIndexRequest(BaseModel):
    imageLabelPairs: List[ImageLabelPair]


class AddImagesToIndexRequest(BaseModel):
    imageLabelPairs: List[ImageLabelPair]
    indexKey: str


class RemoveImagesFromIndexRequest(BaseModel):
    ids: List[int]
    indexKey: str


class IndexInfoRequest(BaseModel):
    indexKey: str


class InferRequest(BaseModel):
    image: str
    indexKey: Optional[str] = None
    detThreshold: Optional[float] = None
    recThreshold: Optional[float] = None
    hammingRadius: Optional[float] = None
    topk: Optional[int] = None
    visualize: Optional[bool] = None  # None: the config's Serving.visualize
