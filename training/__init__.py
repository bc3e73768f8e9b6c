"""Training: optimizer and parameter groups, schedules, distribution, the train step, checkpoints, reporting."""
