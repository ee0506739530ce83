"""Distillation: teachers (live or cached logits), losses, and the one training loop."""
