"""The TorchServe glue: maps requests to the engine and results back to JSON."""
