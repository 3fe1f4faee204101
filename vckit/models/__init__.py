"""Model modules. The whole model is :class:`VoiceConversionModel`."""

from vckit.models.vc import VoiceConversionModel, count_parameters, inference_state_dict

__all__ = ["VoiceConversionModel", "count_parameters", "inference_state_dict"]
