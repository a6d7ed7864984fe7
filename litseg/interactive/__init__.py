"""Interactive-segmentation benchmark: RITM clicker, episode loop, click types, predictors (SAM, SAM2, GrabCut)."""
