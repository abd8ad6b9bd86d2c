"""msGFM model: band-aware patch embeddings, shared Swin-MoE encoder, per-sensor decoders, task heads, hub I/O."""

from msgfm.models.encoder import EncoderOutput, MSGFMEncoder, count_parameters
from msgfm.models.hub import load_pretrained as load
from msgfm.models.msgfm import (
    MSGFM,
    MultiSensorBatch,
    PretrainOutput,
    create_model,
    create_model_from_params,
    masked_l1,
)
from msgfm.models.timm_models import MSGFMBackbone

# `load(path, device="cpu")`: a pretrained model from a local directory; importing this package also
# registers msgfm_tiny and msgfm_base with timm (msgfm.models.timm_models).

__all__ = [
    "MSGFM",
    "MSGFMBackbone",
    "EncoderOutput",
    "MSGFMEncoder",
    "MultiSensorBatch",
    "PretrainOutput",
    "count_parameters",
    "create_model",
    "create_model_from_params",
    "load",
    "masked_l1",
]
