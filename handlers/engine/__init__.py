"""The explanation engine: pure torch + Captum, no TorchServe.

``Explainer(model, input_size).explain(images, jobs)`` returns, per image, the class
probabilities and its maps, all from one forward pass per method.
"""

from .explainer import Explainer, Explanation, Job, SampleResult
from .layers import TargetLayerError
from .methods import METHODS

__all__ = ["METHODS", "Explainer", "Explanation", "Job", "SampleResult", "TargetLayerError"]
