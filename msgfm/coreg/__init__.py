"""Co-registration: every sensor of an AOI on one grid, shift-corrected (the `coregister` stage).

`stage` runs it (and describes the method); `inputs` reads the accepted acquisitions, `aoi_grids` picks
each AOI's grids, `strategies` handles each sensor, with `features`, `shifts` and `warp` below it and
`records` for the per-raster outputs; `residuals` is what the coreg gate re-measures afterwards.
"""
