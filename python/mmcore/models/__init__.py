"""mmcore's PyTorch models (the contract is in /work/notes/model_api.md)."""
