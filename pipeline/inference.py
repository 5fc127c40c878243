"""Reading a course-architecture spec off a state dict's tensor shapes, so checkpoints need no flags.

A bare course ``.pth`` carries no config. Its tensors say almost everything: the number of generator
blocks tells the C1W4B generator (5 blocks, 64x64) from the C1W4A conditional one (4 blocks, 28x28); the
first block's weight [input_dim, width, 3, 3] gives the input length and the width multiplier; the last
block's gives the image channels; the classifier's first and last convolutions give its channels,
width and outputs. What the shapes cannot split, the input length of a conditional generator into z_dim
and n_classes, comes from whichever of the two the user gave (the course's C1W4A uses 64 + 10 = 74).

A value the user gives that contradicts the file is an error naming both (``check_against``).
"""

from __future__ import annotations

import re

import torch

from zsteer.core.errors import CheckpointError

# Wrappers training code commonly saves a state dict in, and key prefixes of wrapped modules
# (DataParallel / DistributedDataParallel add "module.", torch.compile adds "_orig_mod.").
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
KEY_PREFIXES = ("module.", "_orig_mod.")
# The course's C1W4A conditional generator: MNIST z of 64 and 10 classes.
COURSE_CONDITIONAL = (64, 10)


def unwrap(state: dict, role_key: str) -> dict:
    """The state dict inside the usual wrappers, with wrapper prefixes stripped from its keys."""
    for key in (role_key, *WRAPPER_KEYS):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        return state
    for prefix in KEY_PREFIXES:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _blocks(state: dict, stem: str) -> dict[int, torch.Tensor]:
    """{block index: first (conv) weight} of ``stem.{i}.0.weight`` keys."""
    pattern = re.compile(rf"{stem}\.(\d+)\.0\.weight")
    found = {}
    for key, value in state.items():
        match = pattern.fullmatch(key)
        if match and isinstance(value, torch.Tensor) and value.dim() == 4:
            found[int(match.group(1))] = value
    return dict(sorted(found.items()))


def infer_generator(state: dict, given: dict) -> dict:
    """Spec fields (kind, z_dim, n_classes, hidden_dim, im_chan) implied by a course generator's tensors.

    ``given``: the user's values (overrides), used to split a conditional generator's input length.
    Returns {} when the tensors are not a course generator's (the loader then names what is missing).
    """
    blocks = _blocks(state, "gen")
    if len(blocks) not in (4, 5) or list(blocks) != list(range(len(blocks))):
        return {}
    first, last = blocks[0], blocks[len(blocks) - 1]
    input_dim, width = int(first.shape[0]), int(first.shape[1])
    kind = "course_generator" if len(blocks) == 5 else "course_conditional_generator"
    hidden = width // (8 if kind == "course_generator" else 4)
    spec = {"kind": kind, "hidden_dim": hidden, "im_chan": int(last.shape[1])}
    z_dim, n_classes = given.get("z_dim"), given.get("n_classes")
    if z_dim is not None and n_classes is None:
        n_classes = input_dim - z_dim
    elif n_classes is not None and z_dim is None:
        z_dim = input_dim - n_classes
    elif z_dim is None and n_classes is None:
        if kind == "course_generator":
            z_dim, n_classes = input_dim, 0
        elif input_dim == sum(COURSE_CONDITIONAL):
            z_dim, n_classes = COURSE_CONDITIONAL
        else:
            raise CheckpointError(
                f"a conditional generator with {input_dim} inputs (z_dim + n_classes): give --z-dim or "
                "--gen-n-classes to split them"
            )
    if z_dim < 1 or n_classes < 0:
        flag, value = (
            ("--z-dim", given["z_dim"]) if "z_dim" in given else ("--gen-n-classes", given["n_classes"])
        )
        raise CheckpointError(
            f"{flag} {value} contradicts the file, whose generator takes {input_dim} inputs (z_dim + n_classes)"
        )
    return spec | {"z_dim": z_dim, "n_classes": n_classes}


def infer_classifier(state: dict) -> dict:
    """Spec fields (im_chan, hidden_dim, n_classes) implied by a course classifier's tensors ({} if not one)."""
    blocks = _blocks(state, "classifier")
    if len(blocks) != 4 or list(blocks) != [0, 1, 2, 3]:
        return {}
    first, last = blocks[0], blocks[3]
    return {
        "im_chan": int(first.shape[1]),
        "hidden_dim": int(first.shape[0]),
        "n_classes": int(last.shape[0]),
    }


def check_against(inferred: dict, given: dict, flags: dict[str, str], path) -> None:
    """A one-line error where a value the user gave contradicts the file's tensors."""
    for name, value in given.items():
        if value is not None and name in inferred and inferred[name] != value:
            flag = flags.get(name, name)
            raise CheckpointError(
                f"{path}: {flag} {value} contradicts the file, whose tensors hold {name} = {inferred[name]}; "
                f"drop {flag} (it is read from the file)"
            )
