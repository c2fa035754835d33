"""The requirements the report judges (the tests assert the same ones on smaller sets)."""

AGREEMENT_TOLERANCE = 1e-4  # largest |difference| of min-max normalised maps
POINTING_TARGET = 0.95  # share of single-defect images whose Grad-CAM maximum is on the defect
DISCRIMINATION_TARGET = 0.90  # share of scratch+dent images where both class maps pick their own defect
SANITY_LIMIT = 0.5  # median rank correlation a randomised model's map must stay below
FAITHFULNESS_CONTROL_TARGET = 0.90  # share of defect images whose Grad-CAM map outscores each control map
FAITHFULNESS_AUROC_TARGET = 0.80  # AUROC of the faithfulness score for "the map's maximum is on the defect"
