from pipelines.controlled.pipeline_rs_controlled import (
    RSControlledPipeline,
    RSControlledPipelineOutput,
    feather_weights,
)

__all__ = ["RSControlledPipeline", "RSControlledPipelineOutput", "feather_weights"]
