"""torchserve-gradcam: image classification with Grad-CAM explanations for TorchServe.

Rooms of this package, kept apart on purpose:
- ``handlers.engine``: the explanation engine (pure torch + Captum, no TorchServe import);
- ``handlers.serving``: the TorchServe glue (handler class, request parsing, responses);
- ``handlers.render``: encoders and renderers (heatmap grid, PNG, jet overlay);
- ``handlers.models`` / ``handlers.archive``: model building and the MAR packaging CLI;
- ``handlers.inspection``: the embedded default model, its data generator and training.
"""

__version__ = "0.1.0"
