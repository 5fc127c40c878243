"""A job's generator and classifier: the user's files, or the demo models embedded in the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zsteer.core.errors import ZsteerError

from .attributes import load_attribute_names
from .checkpoints import LoadedModel, load_classifier, load_generator


@dataclass(frozen=True)
class ModelSource:
    """Where the generator and classifier come from and how to rebuild a bare course .pth file."""

    # Generator weights (.safetensors + JSON, the course's .pth, or an imported .pt2 + JSON). None = the
    # embedded demo generator.
    generator: Path | None = None
    # Classifier weights. None = the embedded demo classifier.
    classifier: Path | None = None
    # Attribute names (a file, or "celeba40"); None = the classifier's own names, else celeba40.
    attributes: str | None = None
    # Spec overrides for the generator (z_dim, hidden_dim, im_chan, n_classes, kind); bare .pth files
    # carry no config, so the command line has to say what the file holds.
    generator_overrides: tuple[tuple[str, object], ...] = ()
    # Spec overrides for the classifier (hidden_dim, im_chan, n_classes, image_size).
    classifier_overrides: tuple[tuple[str, object], ...] = ()


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
