"""Training data: the CSV manifest, adapters that build it, patient-level splits, datasets."""
