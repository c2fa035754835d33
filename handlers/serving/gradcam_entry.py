"""TorchServe's entry point in every MAR we build.

TorchServe imports the handler file as a top-level module and needs exactly one class
defined in it; this subclass is that class. The work lives in ``handlers.serving``,
shipped inside the MAR next to this file. The server's Python is checked first: when a
package is missing, the class is a stand-in that names it (log line and 503 answers).
"""

from handlers.serving.dependencies import MissingPackagesHandler, missing_packages

if missing_packages():

    class GradCamService(MissingPackagesHandler):
        """Answers every request with a 503 naming the missing packages."""

else:
    from handlers.serving.handler import GradCamHandler

    class GradCamService(GradCamHandler):  # type: ignore[no-redef]
        """The handler class TorchServe instantiates."""
