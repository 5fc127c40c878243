"""Random models of the course's size: what the developer scripts in benchmarks/ time.

Speed depends on the shapes, not the weights, so fresh weights of the C1W4B notebook's sizes (z 64, width
64, 64 x 64 RGB images, the 40 CelebA attributes) measure what trained ones would, with no file to find.
"""

from __future__ import annotations

import torch

from zsteer.pipeline.attributes import CELEBA40
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.models import ClassifierSpec, GeneratorSpec, build_classifier, build_generator


def course_size_models(seed: int = 0) -> tuple[LoadedModel, LoadedModel]:
    """(generator, classifier) of the course's default specs, freshly initialised from ``seed``."""
    torch.manual_seed(seed)
    gspec, cspec = GeneratorSpec(), ClassifierSpec()
    generator = LoadedModel(build_generator(gspec).eval(), gspec, "random", "course-size generator")
    classifier = LoadedModel(
        build_classifier(cspec).eval(), cspec, "random", "course-size classifier", CELEBA40
    )
    return generator, classifier
