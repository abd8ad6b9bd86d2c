"""Inference: a pretrained or fine-tuned model run on rasters (embeddings, predictions)."""
