"""Ingestion: the sources (static STAC catalog, STAC API, folder) and the verified, resumable download."""
