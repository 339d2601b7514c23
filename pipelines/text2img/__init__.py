from pipelines.text2img.pipeline_rs_text2img import RSText2ImagePipeline, RSText2ImagePipelineOutput

__all__ = ["RSText2ImagePipeline", "RSText2ImagePipelineOutput"]
