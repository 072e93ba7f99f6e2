"""rokv worker: holds the dataset and answers lookups."""
