"""Command-line client: send images to a running TorchServe, save overlays, JSON and contact sheets.

``python -m handlers.client [options] PATH...``; see ``handlers.client.cli``. Needs only
``requests`` and Pillow, plus torch for ``--sheet`` and ``--on original`` (they reuse
``handlers.render``). ``python -m handlers.client video IN --out OUT.mp4`` explains a video
(``video_cli``; PyAV, the ``video`` extra).
"""
