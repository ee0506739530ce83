"""Distillation: teachers (their sources, TTA, live or cached logits), losses, and the one training loop.

The names of the losses and teacher TTA modes are declared here, without importing torch (the CLI lists
them, configs check them); their items are registered by :mod:`.losses` and :mod:`.teacher`.
"""

from ..registry import Registry

LOSSES = Registry("distillation loss", home="kdexport.distill.losses")
LOSSES.declare("kd", "Hinton et al. 2015: [T^2] x KL of the softened logits")
LOSSES.declare("dkd", "Decoupled KD (Zhao et al. 2022): target and non-target class terms weighted apart")
LOSSES.declare("dist", "DIST (Huang et al. 2022): Pearson correlation across classes and across the batch")

SOFT_LOSSES = Registry("soft loss", home="kdexport.distill.losses")
SOFT_LOSSES.declare("kl", "KL divergence of the softened distributions (Hinton)")
SOFT_LOSSES.declare("mse", "mean squared error of the logits divided by T (logit matching)")

TTAS = Registry("teacher tta", home="kdexport.distill.teacher")
TTAS.declare("none", "the teacher's own logits")
TTAS.declare("flip", "the mean of the image's and its mirror's logits")
TTAS.declare("flip-shift", "airbench's: flip plus 1-pixel translations (6 passes)")
