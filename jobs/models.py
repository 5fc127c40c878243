"""The job's generator and classifier: the user's files, or the demo models embedded in the package."""

from __future__ import annotations

from pathlib import Path

from zsteer.pipeline.attributes import load_attribute_names
from zsteer.pipeline.checkpoints import LoadedModel, load_classifier, load_generator
from zsteer.core.errors import ZsteerError

from .config import ModelSource


def demo_model_paths() -> dict[str, Path]:
    """Paths of the embedded demo models (``zsteer.demo.demo_paths()``), or a one-line error."""
    try:
        from zsteer.demo import demo_paths
    except ImportError as exc:
        raise ZsteerError(
            f"no --generator/--classifier given and the embedded demo models are not available ({exc}); "
            "pass --generator and --classifier"
        ) from None
    paths = {key: Path(value) for key, value in demo_paths().items()}
    for role in ("generator", "classifier"):
        if role not in paths or not paths[role].is_file():
            raise ZsteerError(
                f"no --{role} given and the embedded demo {role} is missing "
                f"({paths.get(role, 'not listed')}); pass --{role}"
            )
    return paths


def load_models(source: ModelSource) -> tuple[LoadedModel, LoadedModel]:
    """(generator, classifier), frozen and in eval mode, with the overrides a bare .pth needs."""
    generator, classifier = source.generator, source.classifier
    if generator is None or classifier is None:
        demo = demo_model_paths()
        generator = generator or demo["generator"]
        classifier = classifier or demo["classifier"]
    names = load_attribute_names(source.attributes) if source.attributes else None
    gen = load_generator(generator, **dict(source.generator_overrides))
    cls = load_classifier(classifier, attributes=names, **dict(source.classifier_overrides))
    return gen, cls
