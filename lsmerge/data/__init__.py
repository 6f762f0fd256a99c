"""Weight tensors as training data: chunking (pure) and the Lightning DataModule."""
