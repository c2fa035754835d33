"""The explanation engine: pure torch + Captum, no TorchServe.

``Explainer(model, input_size).explain(images, jobs)`` returns, per image, the class
probabilities and its maps, each method from one forward pass (plus what it needs on top).
"""

from .explainer import Explainer, Explanation, Job, SampleResult
from .faithfulness import Faithfulness, FaithfulnessParams
from .layers import TargetLayerError
from .methods import METHODS, Method, MethodError, MethodLimits, MethodParams

__all__ = [
    "METHODS",
    "Explainer",
    "Explanation",
    "Faithfulness",
    "FaithfulnessParams",
    "Job",
    "Method",
    "MethodError",
    "MethodLimits",
    "MethodParams",
    "SampleResult",
    "TargetLayerError",
]
