"""Lightning modules on the shared core models (pre-training, fine-tuning, segmentation)."""
