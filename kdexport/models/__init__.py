"""Models: the architecture registry (ModelSpec -> nn.Module) and checkpoints."""
