"""The simulated world: ground truth (`world`), how each sensor sees it (`observe`), the stage (`simulate`)."""
