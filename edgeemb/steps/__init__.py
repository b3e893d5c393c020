"""Recipe steps. Each step is a config (a frozen pydantic model: data) and a function
`(EmbeddingTable, config, context) -> EmbeddingTable` (the work). No step knows a file format or
the CLI: what a step may know of the model beyond its table comes in a `StepContext`.
"""

from edgeemb.steps import peers, quantize, svd, trim  # noqa: F401  (importing a step's module registers it)
from edgeemb.steps.base import STEPS, PathArgument, Step, StepConfig, StepContext, register

__all__ = ["STEPS", "PathArgument", "Step", "StepConfig", "StepContext", "register"]
