"""Tools on a trained run: evaluation of a checkpoint, and predictions for image files."""
