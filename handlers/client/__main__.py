"""``python -m handlers.client``: the same as the ``torchserve-gradcam`` console script."""

from .cli import main

raise SystemExit(main())
