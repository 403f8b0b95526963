"""Student training: the distillation loss (the Ray Train loop builds on it)."""
