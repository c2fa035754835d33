"""Benchmarks: does an explanation come at almost no extra cost? Not part of CI.

``python -m benchmarks`` runs every section and writes benchmarks/RESULTS.md:
1. engine: each explanation path vs a plain prediction, and vs Captum / pytorch-grad-cam;
2. end to end: a real TorchServe under bounded load, ours vs the stock image_classifier;
3. memory: autograd memory saved for backward, and TorchServe worker peak RSS;
4. thread settings of the TorchServe workers on this 2-core machine.
"""
