"""Model modules. The whole model is :class:`VoiceConversionModel`."""

from vckit.models.vc import VoiceConversionModel, build_model, count_parameters, export_for_inference, inference_state_dict

__all__ = ["VoiceConversionModel", "build_model", "count_parameters", "export_for_inference", "inference_state_dict"]
