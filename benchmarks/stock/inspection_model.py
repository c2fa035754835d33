"""Model file of the stock MAR for the embedded ``inspection`` model.

The ``handlers`` package is packed next to this file, so the architecture is the one our
own MAR serves, with the same weights.
"""

from handlers.inspection.network import InspectionNet


class StockInspectionNet(InspectionNet):
    """InspectionNet under a class defined in this module (TorchServe lists only those)."""
