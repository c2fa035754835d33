"""Model file of the stock ``image_classifier`` MAR: torchvision's ResNet-50 architecture.

TorchServe's ``_load_pickled_model`` instantiates the one class defined here with no
arguments and loads the MAR's state_dict into it, the same random weights our MAR serves.
"""

from torchvision.models import resnet


class ResNet50(resnet.ResNet):
    """torchvision ``resnet50`` (Bottleneck, 3-4-6-3 blocks, 1000 classes)."""

    def __init__(self) -> None:
        super().__init__(resnet.Bottleneck, [3, 4, 6, 3])
