"""Building blocks shared by the models: attention dispatch, norms, rotary embeddings, activations."""
