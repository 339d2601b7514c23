"""diffusers-based pipelines of rsgen, one task per subpackage."""

from pipelines.bundle import BundleError, ModelCard, load_bundle
from pipelines.text2img import RSText2ImagePipeline, RSText2ImagePipelineOutput
from pipelines.tiny_bundle import build_tiny_bundle

__all__ = [
    "BundleError",
    "ModelCard",
    "RSText2ImagePipeline",
    "RSText2ImagePipelineOutput",
    "build_tiny_bundle",
    "load_bundle",
]
