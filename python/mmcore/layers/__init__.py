"""Building blocks shared by the models: attention dispatch, linear layers, norms, rotary
embeddings, activations."""
