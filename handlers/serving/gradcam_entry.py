"""TorchServe's entry point in every MAR we build.

TorchServe imports the handler file as a top-level module and needs exactly one class
defined in it; this subclass is that class. The work lives in ``handlers.serving``,
shipped inside the MAR next to this file.
"""

from handlers.serving.handler import GradCamHandler


class GradCamService(GradCamHandler):
    """The handler class TorchServe instantiates."""
