"""Datasets: the real benchmarks in their publishers' layouts, the pretraining sampler and the downstream task data."""
