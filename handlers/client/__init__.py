"""Command-line client: send images to a running TorchServe, save overlays, JSON and contact sheets.

``python -m handlers.client [options] PATH...``; see ``handlers.client.cli``. Needs only
``requests`` and Pillow, plus torch for ``--sheet`` (it reuses ``handlers.render``).
"""
