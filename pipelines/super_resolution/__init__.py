from pipelines.super_resolution.pipeline_rs_sr import RSSuperResolutionPipeline, RSSuperResolutionPipelineOutput

__all__ = ["RSSuperResolutionPipeline", "RSSuperResolutionPipelineOutput"]
