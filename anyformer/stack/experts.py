"""The block of a mixture-of-experts feedforward layer (``ff_num_experts > 1``)."""

from __future__ import annotations

from torch import Tensor

from .blocks import FeedForwardBlock, StackRun

__all__ = ["ExpertsBlock"]


class ExpertsBlock(FeedForwardBlock):
    """A feedforward block whose branch is a MixtureOfExperts (inside Macaron's Scale, maybe):
    when the run collects intermediates, the router's aux losses join ``run.router_losses``."""

    def forward(self, x: Tensor, run: StackRun, slot: int | None = None) -> Tensor:
        if not run.collect:
            return self.join(x, self.branch(self.branch_input(x, run, slot)), run)
        run.layer_hiddens.append(x)
        out = self.branch(self.branch_input(x, run, slot), losses=run.router_losses)
        return self.join(x, out, run)
