"""ArcFace head (Deng et al., 2019): additive angular margin on normalised features.

logit_j = s * cos(theta_j)         for the other classes
logit_y = s * cos(theta_y + m)     for the true class y

Features and class weights are L2-normalised, so cos(theta) is a plain matrix product. The
class weights are stored [embedding_size, class_num] (`weight`), as in PaddleClas, so its
checkpoints load by name.

Partial FC (An et al., 2022, insightface): with sample_rate < 1, each training step scores only
a subset of the class centres: every class present in the batch plus random others, up to
sample_rate * class_num. With 93k (MS1M) to 360k (Glint360K) identities the [N, classes] logits
and their margin arithmetic dominate the step; sampling shrinks them and the matrix product by
the rate. At sample_rate 1.0 the head is the exact softmax over all classes.
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class ArcMargin(nn.Layer):
    def __init__(self, embedding_size, class_num, margin=0.5, scale=64.0, easy_margin=False, sample_rate=1.0):
        super().__init__()
        if class_num < 1:
            raise ValueError(f"ArcMargin needs at least one class, got class_num={class_num}")
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.sample_rate = float(sample_rate)
        self.embedding_size = int(embedding_size)
        self.class_num = int(class_num)
        self.margin = float(margin)
        self.scale = float(scale)
        self.easy_margin = bool(easy_margin)
        self.weight = self.create_parameter(
            shape=[self.embedding_size, self.class_num],
            default_initializer=nn.initializer.XavierNormal(),
        )
        self.cos_m = math.cos(self.margin)
        self.sin_m = math.sin(self.margin)
        # cos(theta + m) stops decreasing once theta + m passes pi, which would *reward* hard
        # samples. Past theta = pi - m (cos(theta) < th) use the linear continuation
        # cos(theta) - m*sin(m) instead, which keeps the target logit monotonic in theta.
        self.th = math.cos(math.pi - self.margin)
        self.mm = math.sin(math.pi - self.margin) * self.margin

    def cosine(self, features, weight=None):
        """cos(theta) between each feature and each class centre: [N, class_num] in [-1, 1]."""
        feat = F.normalize(features, p=2, axis=1)
        weight = F.normalize(self.weight if weight is None else weight, p=2, axis=0)
        return paddle.matmul(feat, weight)

    def forward(self, features, label=None):
        """With `label` ([N] or [N, 1] int): scaled margin logits for cross-entropy.
        Without: the plain cosine similarities (unscaled), e.g. for evaluation."""
        cos = self.cosine(features)
        if label is None:
            return cos
        return self._margin(cos, paddle.reshape(label, [-1]).astype("int64"))

    def sample_classes(self, label):
        """(sorted class indices to score, each label's position among them) for one step: every
        class in the batch, then random others up to sample_rate * class_num (Partial FC)."""
        label = paddle.reshape(label, [-1]).astype("int64")
        positives = paddle.unique(label)
        num_sample = max(int(round(self.sample_rate * self.class_num)), int(positives.shape[0]))
        # every positive first (priority 2), then the negatives in a random order (priority in [0, 1))
        priority = paddle.scatter(paddle.rand([self.class_num]), positives, paddle.full([positives.shape[0]], 2.0))
        index = paddle.sort(paddle.topk(priority, num_sample).indices)
        position = paddle.scatter(paddle.full([self.class_num], -1, dtype="int64"), index,
                                  paddle.arange(num_sample, dtype="int64"))
        return index, paddle.gather(position, label)

    def margin_logits(self, features, label):
        """(scaled margin logits, target) for the loss: over every class at sample_rate 1.0 (target =
        label), else over the classes sample_classes picks (target = the label's position there)."""
        label = paddle.reshape(label, [-1]).astype("int64")
        if self.sample_rate >= 1.0 or not self.training:
            return self._margin(self.cosine(features), label), label
        index, target = self.sample_classes(label)
        cos = self.cosine(features, paddle.gather(self.weight, index, axis=1))
        return self._margin(cos, target), target

    def _margin(self, cos, label):
        # clip keeps sqrt's argument >= 0 when rounding pushes |cos| a hair above 1
        sin = paddle.sqrt(paddle.clip(1.0 - cos * cos, min=1e-12))
        phi = cos * self.cos_m - sin * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            phi = paddle.where(cos > 0, phi, cos)
        else:
            phi = paddle.where(cos > self.th, phi, cos - self.mm)
        one_hot = F.one_hot(label, cos.shape[1]).astype(cos.dtype)
        logits = one_hot * phi + (1.0 - one_hot) * cos
        return logits * self.scale

    def extra_repr(self):
        return (f"embedding_size={self.embedding_size}, class_num={self.class_num}, margin={self.margin}, "
                f"scale={self.scale}, easy_margin={self.easy_margin}, sample_rate={self.sample_rate}")
