"""Files packed into the stock-TorchServe MARs the benchmarks compare against.

TorchServe imports each of them by file name inside its worker, where each must define
exactly one class; they are never imported by the benchmarks themselves.
"""
