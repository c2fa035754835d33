"""The explanation methods, one class each, registered here by name.

Everything that offers methods (request options, the archive CLI, the model description,
client, viewer, evaluation, benchmarks) reads this registry: adding a method is one class
and one line below.
"""

from .activations import Activations
from .base import ExplainedModel, MapLayer, Method, MethodError, MethodLimits, MethodOutput, MethodParams
from .captum_methods import IntegratedGradientsMethod, OcclusionSensitivity
from .eigencam import EigenCam
from .gradient_cams import Cam, GradCam, GradCamPlusPlus, HiResCam, LayerCam, XGradCam
from .guided import GuidedBackprop, GuidedGradCam
from .prediction import NoExplanation

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        NoExplanation(),
        GradCam(),
        GuidedGradCam(),
        Cam(),
        HiResCam(),
        GradCamPlusPlus(),
        XGradCam(),
        LayerCam(),
        EigenCam(),
        GuidedBackprop(),
        Activations(),
        OcclusionSensitivity(),
        IntegratedGradientsMethod(),
    )
}

__all__ = [
    "METHODS",
    "ExplainedModel",
    "MapLayer",
    "Method",
    "MethodError",
    "MethodLimits",
    "MethodOutput",
    "MethodParams",
]
