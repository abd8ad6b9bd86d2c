"""Chips: positions, spatial-block splits, sensor pairing and the chip store (the `pair` stage)."""
