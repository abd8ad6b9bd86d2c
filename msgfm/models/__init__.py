"""msGFM model: band-aware patch embeddings, shared Swin-MoE encoder, per-sensor decoders, task heads, hub I/O."""

from msgfm.models.encoder import EncoderOutput, MSGFMEncoder, count_parameters
from msgfm.models.msgfm import (
    MSGFM,
    MultiSensorBatch,
    PretrainOutput,
    create_model,
    create_model_from_params,
    masked_l1,
)

__all__ = [
    "MSGFM",
    "EncoderOutput",
    "MSGFMEncoder",
    "MultiSensorBatch",
    "PretrainOutput",
    "count_parameters",
    "create_model",
    "create_model_from_params",
    "masked_l1",
]
