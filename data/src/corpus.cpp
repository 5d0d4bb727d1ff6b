// Filled in by the data work (see data/include/data/).
