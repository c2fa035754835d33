"""TorchServe's stock ImageClassifier with the inspection model's input transform.

The stock handler hard-codes ImageNet's Resize(256) + CenterCrop(224) and top-5; the
inspection model sees 128 x 128 inputs with its own mean/std and has 3 classes. Only
those two class attributes change: batching, inference, postprocess and the
IntegratedGradients /explanations are stock.
"""

from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier

from handlers.inspection import INPUT_SIZE, MEAN, STD


class InspectionImageClassifier(ImageClassifier):
    """Stock image classification for 128 x 128 metal-surface images."""

    topk = 3
    image_processing = transforms.Compose(
        [transforms.Resize((INPUT_SIZE, INPUT_SIZE)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
