"""mmcore's PyTorch models; the contract is :mod:`mmcore.models.interfaces` and the guide
is ``docs/adding_a_model.md``."""
