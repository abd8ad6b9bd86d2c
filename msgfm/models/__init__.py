"""msGFM model: band-aware patch embeddings, shared Swin-MoE encoder, per-sensor decoders, task heads, hub I/O."""

from msgfm.models.encoder import (
    MODEL_CONFIGS,
    EncoderOutput,
    MSGFMConfig,
    MSGFMEncoder,
    count_parameters,
    get_config,
)
from msgfm.models.msgfm import (
    MSGFM,
    MultiSensorBatch,
    PretrainOutput,
    create_model,
    create_model_from_params,
    masked_l1,
)

__all__ = [
    "MODEL_CONFIGS",
    "MSGFM",
    "EncoderOutput",
    "MSGFMConfig",
    "MSGFMEncoder",
    "MultiSensorBatch",
    "PretrainOutput",
    "count_parameters",
    "create_model",
    "create_model_from_params",
    "get_config",
    "masked_l1",
]
