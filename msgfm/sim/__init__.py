"""The simulated world: ground truth (`world`), sensors (`observe`), the stage (`simulate`), a PNG (`preview`)."""
