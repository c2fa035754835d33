"""Helpers shared by the tests and the benchmarks (like ``numpy.testing``); not shipped in MARs.

- ``torchserve``: start and stop a real TorchServe on private loopback ports, token helpers.
- ``fakes``: TorchServe's real worker ``Context`` built from an unpacked MAR, driven batch by batch.
- ``mars``: tiny custom MARs built by our CLI, for handler tests that need no trained model.
- ``images``: small random images encoded in any Pillow format.
"""
