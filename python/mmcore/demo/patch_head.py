"""A training-only head that reads each image token's labels off the projector's output.

The demo model learnt to name every shape and describe a picture in order, yet could not find
a shape by its name ("What colour is the star?" near chance with two or three shapes): nothing
in a patch's features said which shape it belonged to. A linear head over each projector output
token, trained to predict the token's shape, colour and third (:mod:`mmcore.demo.patch_labels`),
makes the tokens say so in a form the language model's attention can match. The head is not part
of the model: training drops it at save, so the checkpoint stays a standard LLaVA checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmcore.demo import patch_labels


class PatchHead(torch.nn.Module):
    """One linear classifier per label kind over the projector's output tokens."""

    def __init__(self, hidden_size: int):
        """
        Args:
            hidden_size: width of the projector's output (the language model's width).
        """
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, sum(patch_labels.NUM_CLASSES))

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Logits per label kind, each (pictures, tokens, classes), in float32."""
        logits = self.proj(features.float())
        return list(logits.split(patch_labels.NUM_CLASSES, dim=-1))


def patch_loss(head: PatchHead, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's predictions, summed over label kinds.

    The shape is predicted for every token (background included); colour and third only for
    tokens that show a shape: "background" is then the shape head's to say, and the others
    need no nonlinear "is this a shape?" of their own (a linear head cannot tell "any colour"
    from grey, nor "a shape here" from a position alone).

    Args:
        head: the head.
        features: projector output, (pictures, NUM_TOKENS, hidden).
        labels: (pictures, 3, NUM_TOKENS) from :mod:`mmcore.demo.patch_labels`.

    Returns:
        The loss (a float32 scalar).
    """
    shown = labels[:, 0] > 0
    total = features.new_zeros((), dtype=torch.float32)
    for kind, logits in enumerate(head(features)):
        target = labels[:, kind] if kind == 0 else labels[:, kind].masked_fill(~shown, -100)
        total = total + F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())
    return total


@torch.no_grad()
def patch_accuracy(head: PatchHead, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy per label kind over the tokens that show a shape (for the training log).

    Args:
        head: the head.
        features: projector output, (pictures, NUM_TOKENS, hidden).
        labels: (pictures, 3, NUM_TOKENS).

    Returns:
        ``{"shape": a, "colour": a, "cell": a}``.
    """
    shown = labels[:, 0] > 0
    count = max(1, int(shown.sum()))
    return {
        name: round(int(((logits.argmax(-1) == labels[:, kind]) & shown).sum()) / count, 4)
        for kind, (name, logits) in enumerate(zip(patch_labels.LABEL_KINDS, head(features)))
    }
