"""The engine: input processing, the model runner, and the generate/chat API."""
