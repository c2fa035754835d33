"""Evidence that the explanations are right, measured rather than eyeballed.

- ``agreement``: our maps against independent implementations (Captum, pytorch-grad-cam)
  on torchvision architectures with random weights and on the default model;
- ``localisation``: maps of the default ``inspection`` model against the ground-truth
  defect masks of a held-out generated set (pointing game, energy in mask, class
  discrimination on images carrying both defects);
- ``sanity``: the model-parameter randomisation test (Adebayo et al., 2018);
- ``report`` / ``__main__``: ``python -m handlers.evaluation`` writes docs/evaluation.md.

Only ``agreement`` needs pytorch-grad-cam (a test dependency), imported where it is used.
"""
