// Filled in by the checkpoint work (see checkpoints/include/checkpoints/).
