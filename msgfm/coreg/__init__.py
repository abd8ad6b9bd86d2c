"""Co-registration: every sensor of an AOI on one grid, shift-corrected (the `coregister` stage)."""
